"""An endpoint created with precision int8 answers with int8 vectors, also after a restart; fp32 beside it on
the same model stays fp32; the CLI, the admin API and /v1/models show the precision."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from e5studio.engine import int8_kernels
from e5studio.engine.cpu import cpu_features
from e5studio.engine.embedder import Embedder
from e5studio.settings import EngineSettings
from tests.serving.server import MINILM, ServerProcess, json_prefix

pytestmark = pytest.mark.skipif(not int8_kernels.available(), reason="this torch build has no FBGEMM kernels")

TEXTS = ["query: how much protein should a female eat", "passage: Protein needs rise with age and activity."]


def _embed(server: ServerProcess, path: str, key: str) -> np.ndarray:
    with httpx.Client(base_url=server.base_url, timeout=120, trust_env=False) as client:
        answer = client.post(path, json={"inputs": TEXTS}, headers={"key": key})
    assert answer.status_code == 200, answer.text
    return np.asarray(answer.json()["data"], dtype=np.float32)


def test_int8_endpoint_survives_a_restart(tmp_path: Path, minilm_embedder: Embedder, minilm_dir: Path) -> None:
    int8 = Embedder.load(EngineSettings(model=str(minilm_dir), device="cpu", precision="int8"))
    expected_int8, expected_fp32 = int8.embed(TEXTS), minilm_embedder.embed(TEXTS)
    assert np.abs(expected_int8 - expected_fp32).max() > 1e-3  # the two precisions are distinguishable

    server = ServerProcess(tmp_path / "data", tmp_path / "logs")
    server.start()
    try:
        assert server.cli("projects", "create", "search").returncode == 0
        created = server.cli("endpoints", "create", "search", "fast", "--model", MINILM, "--precision", "int8")
        assert created.returncode == 0, created.stderr
        view = json_prefix(created.stdout)["endpoint"]
        key = json_prefix(created.stdout)["key"]
        assert view["precision"] == "int8"
        path = view["urls"]["nlp"].removeprefix(server.base_url)
        assert server.wait_status("search", "fast")["status"] == "Live"
        default = server.banner()
        default_path = default.url.removeprefix(server.base_url)

        np.testing.assert_allclose(_embed(server, path, key), expected_int8, rtol=0, atol=1e-5)
        np.testing.assert_allclose(_embed(server, default_path, default.key), expected_fp32, rtol=0, atol=1e-5)
        listed = server.cli("endpoints", "list")
        assert "search/fast" in listed.stdout and "precision=int8" in listed.stdout, listed.stdout
        with httpx.Client(base_url=server.base_url, timeout=30, trust_env=False) as client:
            models = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]
        assert [(m["id"], m["precision"]) for m in models] == [("fast", "int8")]
        assert models[0]["kernels"] == cpu_features().describe()  # the kernel set the CPU computes with
        refused = server.cli("endpoints", "create", "search", "odd", "--model", MINILM, "--precision", "int4")
        assert refused.returncode != 0 and "int4" in refused.stderr
        half = server.cli("endpoints", "create", "search", "half", "--model", MINILM, "--precision", "bf16")
        if "bf16" not in cpu_features().precisions:  # refused when created, with the reason, and not recorded
            assert half.returncode != 0 and "native bf16" in half.stderr, half.stdout + half.stderr
            assert "search/half" not in server.cli("endpoints", "list").stdout
        else:
            assert half.returncode == 0, half.stderr

        assert server.stop() == 0
        server.start()  # the precision is stored with the endpoint
        assert server.wait_status("search", "fast")["status"] == "Live"
        np.testing.assert_allclose(_embed(server, path, key), expected_int8, rtol=0, atol=1e-5)
        np.testing.assert_allclose(_embed(server, default_path, default.key), expected_fp32, rtol=0, atol=1e-5)
    finally:
        if server.running:
            server.stop()
