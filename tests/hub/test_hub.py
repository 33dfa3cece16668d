"""The first path of every real user, under test: ``--model e5-large-v2`` fetched from the Hugging Face Hub.

A local HTTP server stands in for the hub (:mod:`tests.hub.fake_hub`, ``HF_ENDPOINT`` pointed at it) with
``intfloat/e5-large-v2`` holding a random checkpoint of the E5 layout under the real repo's file names. From an
empty cache (``HF_HOME`` in tmp): ``e5studio models pull`` downloads and verifies with progress, a download
whose connection drops or whose process is killed continues with a Range request, ``models list`` shows the
cache, and ``serve --model e5-large-v2`` downloads, deploys and answers ``/api/predict/nlp`` with unit vectors
of the checkpoint's size.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from e5studio.engine.checkpoint import BertConfig
from tests.hub.fake_hub import COMMIT, FakeHub, write_e5_repo

# 128-d, 2 layers: the weights file (~17 MB) is larger than huggingface_hub's 10 MB download chunk, so a cut
# after 12 MB leaves a part on disk to continue from
SMALL = BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=256, max_position_embeddings=512)
HUB_ID = "intfloat/e5-large-v2"


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    write_e5_repo(root, SMALL, HUB_ID)
    return root


def hub_env(hub: FakeHub, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E5STUDIO_", "HF_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_DISABLE_XET="1", E5STUDIO_DEVICE="cpu",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", HF_HUB_DISABLE_TELEMETRY="1")
    return env


def e5studio(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "e5studio", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture
def hub(hub_root: Path) -> Iterator[FakeHub]:
    server = FakeHub(hub_root)
    yield server
    server.close()


def weights_gets(hub: FakeHub) -> list[str]:
    return [rng for method, path, rng in hub.log.requests if method == "GET" and path.endswith("model.safetensors")]


def test_pull_from_empty_cache_verifies_and_lists(hub: FakeHub, hub_root: Path, tmp_path: Path) -> None:
    env = hub_env(hub, tmp_path / "hf")
    hub.drop_once = "model.safetensors"  # the connection drops mid-file once
    done = e5studio(env, "models", "pull", "e5-large-v2")
    assert done.returncode == 0, done.stderr
    assert "downloaded" in done.stdout and "verified" in done.stdout, done.stdout
    assert "downloading intfloat/e5-large-v2" in done.stderr and "MB" in done.stderr, done.stderr
    gets = weights_gets(hub)
    assert gets[0] == "" and gets[1] == "bytes=12000000-", gets  # continued after the 12 MB it had
    snapshot = tmp_path / "hf" / "hub" / "models--intfloat--e5-large-v2" / "snapshots" / COMMIT
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "1_Pooling/config.json"):
        assert (snapshot / name).read_bytes() == (hub_root / HUB_ID / name).read_bytes(), name
    listing = e5studio(env, "models", "list")
    assert listing.returncode == 0, listing.stderr
    assert HUB_ID in listing.stdout and "MB" in listing.stdout, listing.stdout
    again = e5studio(env, "models", "pull", "e5-large-v2")
    assert again.returncode == 0 and "already cached" in again.stdout, again.stdout + again.stderr
    assert len(weights_gets(hub)) == 2  # nothing fetched again


def test_killed_pull_continues_where_it_stopped(hub: FakeHub, tmp_path: Path) -> None:
    env = hub_env(hub, tmp_path / "hf")
    hub.stall_once = "model.safetensors"
    proc = subprocess.Popen([sys.executable, "-m", "e5studio", "models", "pull", "e5-large-v2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    blobs = tmp_path / "hf" / "hub" / "models--intfloat--e5-large-v2" / "blobs"
    try:
        assert hub.log.partial_sent.wait(60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(p.stat().st_size == 12_000_000
                                                      for p in blobs.glob("*.e5studio-part")):
            time.sleep(0.05)
    finally:
        proc.kill()  # the download's process dies mid-file
        proc.wait()
    hub.log.release.set()
    done = e5studio(env, "models", "pull", "e5-large-v2")
    assert done.returncode == 0, done.stderr
    assert weights_gets(hub) == ["", "bytes=12000000-"], weights_gets(hub)
    assert "downloaded" in done.stdout and "verified" in done.stdout, done.stdout
    assert not list(blobs.glob("*.e5studio-part"))


def test_pull_refuses_a_corrupt_file(hub_root: Path, tmp_path: Path) -> None:
    """A file whose bytes are not the ones the hub lists is refused (and removed), not used."""
    root = tmp_path / "hub"
    repo = write_e5_repo(root, BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=4, intermediate_size=64), HUB_ID)
    server = FakeHub(root)
    original = server.tree_entry

    def lying(repo_dir: Path, file: Path) -> dict[str, object]:
        entry = original(repo_dir, file)
        if file.name == "vocab.txt":
            entry["oid"] = hashlib.sha1(b"something else").hexdigest()
        return entry

    server.tree_entry = lying  # type: ignore[method-assign]
    try:
        done = e5studio(hub_env(server, tmp_path / "hf"), "models", "pull", "e5-large-v2")
    finally:
        server.close()
    assert done.returncode == 2
    assert "vocab.txt: downloaded file does not match the hub" in done.stderr, done.stderr
    assert repo.is_dir()


def test_pull_names_an_unknown_repo(hub: FakeHub, tmp_path: Path) -> None:
    done = e5studio(hub_env(hub, tmp_path / "hf"), "models", "pull", "intfloat/no-such-model")
    assert done.returncode == 2
    assert "cannot list intfloat/no-such-model on the Hugging Face Hub" in done.stderr, done.stderr


def serve_from_hub(hub: FakeHub, tmp_path: Path, dim: int) -> None:
    from tests.serving import server as serving

    env = hub_env(hub, tmp_path / "hf")
    proc = serving.ServerProcess(tmp_path / "data", tmp_path / "logs", model="e5-large-v2")
    original = serving.cli_env
    serving.cli_env = lambda **extra: {**env, **extra}  # type: ignore[assignment]
    try:
        proc.start()
    finally:
        serving.cli_env = original  # type: ignore[assignment]
    try:
        banner = proc.banner()
        answer = httpx.post(banner.url, json={"inputs": ["query: how are vectors made?", "passage: like this"]},
                            headers={"key": banner.key}, timeout=60, trust_env=False)
        assert answer.status_code == 200, answer.text
        vectors = np.array(answer.json()["data"], dtype=np.float32)
        assert vectors.shape == (2, dim)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert weights_gets(hub), "the weights were not fetched from the hub"
    finally:
        proc.stop()


def test_serve_downloads_deploys_and_answers(hub: FakeHub, tmp_path: Path) -> None:
    serve_from_hub(hub, tmp_path, SMALL.hidden_size)


@pytest.mark.slow
def test_serve_full_size_e5_large_from_the_hub(tmp_path: Path) -> None:
    """The real shape (1024-d, 24 layers, 1.34 GB of weights) through the same path."""
    root = tmp_path / "hub"
    write_e5_repo(root, "e5-large-v2", HUB_ID)
    server = FakeHub(root, drop_once="model.safetensors", cut_at=700_000_000)
    try:
        serve_from_hub(server, tmp_path, 1024)
        assert weights_gets(server)[1].startswith("bytes=")
    finally:
        server.close()
