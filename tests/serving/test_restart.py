"""Stop and restart on the same data directory; shutdown behaviour; no key or token in clear anywhere; an int8
endpoint keeps its precision across the restart.

One fixture drives a dedicated server through the whole story (first start, endpoints (one of them int8) and
traffic, SIGTERM with a request in flight, second start, traffic, Ctrl+C) and records what happened; the tests
then check one property each on the record.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from e5studio.engine import int8_kernels
from e5studio.engine.cpu import cpu_features
from e5studio.engine.embedder import Embedder
from e5studio.settings import EngineSettings
from tests.serving.server import (
    MINILM,
    SECRET_RE,
    Banner,
    ServerProcess,
    assert_no_secrets,
    assert_vectors,
    json_prefix,
)

Embed = Callable[..., np.ndarray]
TEXT = "query: does the key survive a restart"
# 32 texts truncated at MiniLM's 256 tokens: seconds of compute on one CPU thread, so SIGTERM arrives mid-request
IN_FLIGHT = [f"passage: in flight {i} " + "a fairly long sentence about nutrition and health " * 40 for i in range(32)]
INT8 = int8_kernels.available()  # this torch build has FBGEMM's kernels: the story includes an int8 endpoint
INT8_TEXTS = ["query: how much protein should a female eat", "passage: Protein needs rise with age and activity."]


@dataclass
class Int8Record:
    """The int8 endpoint ``shop/fast`` (MiniLM, beside the fp32 endpoints on the same model)."""

    key: str = ""
    path: str = ""
    view: dict[str, Any] = field(default_factory=dict)  # as `endpoints create` printed it
    listed: str = ""  # `endpoints list`
    models: list[dict[str, Any]] = field(default_factory=list)  # /v1/models with its key
    refused: tuple[int, str] = (0, "")  # `endpoints create ... --precision int4`: exit status, stderr
    half: tuple[int, str] | None = None  # `--precision bf16` where this CPU has no native bf16 (else not tried)
    answers: dict[str, Any] = field(default_factory=dict)  # (run, endpoint) -> vectors of INT8_TEXTS


@dataclass
class Story:
    server: ServerProcess
    banner: Banner
    keys: dict[str, str] = field(default_factory=dict)  # endpoint name -> current key
    paths: dict[str, str] = field(default_factory=dict)  # endpoint name -> nlp path
    old_key: str = ""
    endpoints_before: list[dict[str, Any]] = field(default_factory=list)
    projects_before: list[dict[str, Any]] = field(default_factory=list)
    endpoints_after: list[dict[str, Any]] = field(default_factory=list)
    projects_after: list[dict[str, Any]] = field(default_factory=list)
    before: dict[str, int] = field(default_factory=dict)  # what answered what, before the restart
    after: dict[str, Any] = field(default_factory=dict)  # and after it
    in_flight: Any = None
    data_after_first_run: dict[str, bytes] = field(default_factory=dict)
    int8: Int8Record = field(default_factory=Int8Record)


def _post(server: ServerProcess, path: str, key: str, texts: list[str]) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, timeout=120, trust_env=False) as client:
        return client.post(path, json={"inputs": texts}, headers={"key": key})


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Story:
    root = tmp_path_factory.mktemp("restart")
    # one torch thread: the in-flight request below takes over a second whatever the machine
    server = ServerProcess(root / "data", root / "logs", "--threads", "1")

    # -- first run ------------------------------------------------------------------------------------
    server.start()
    record = Story(server=server, banner=server.banner(1))
    record.keys[MINILM] = record.banner.key
    record.paths[MINILM] = f"/api/predict/nlp/{record.banner.project_id}/{record.banner.endpoint_id}"
    assert server.cli("projects", "create", "shop").returncode == 0
    for name, size in (("live", "1"), ("bulk", "32")):
        created = server.cli("endpoints", "create", "shop", name, "--model", MINILM, "--batch-size", size)
        assert created.returncode == 0, created.stderr
        body = json_prefix(created.stdout)
        record.keys[name] = body["key"]
        record.paths[name] = f"/api/predict/nlp/{body['endpoint']['project_id']}/{body['endpoint']['id']}"
        assert server.wait_status("shop", name)["status"] == "Live"
    if INT8:
        _int8_endpoint(server, record)
    rotated = server.cli("endpoints", "rotate-key", "shop", "bulk")
    assert rotated.returncode == 0, rotated.stderr
    record.old_key, record.keys["bulk"] = record.keys["bulk"], json_prefix(rotated.stdout)["key"]
    for name in record.keys:
        record.before[name] = _post(server, record.paths[name], record.keys[name], [TEXT]).status_code
    record.before["old bulk key"] = _post(server, record.paths["bulk"], record.old_key, [TEXT]).status_code
    record.before["made-up key"] = _post(server, record.paths["bulk"], "e5s_" + "Z" * 43, [TEXT]).status_code
    record.endpoints_before = server.admin("GET", "/api/admin/endpoints").json()["endpoints"]
    record.projects_before = server.admin("GET", "/api/admin/projects").json()["projects"]

    # a big request in flight when SIGTERM arrives: graceful shutdown lets it finish
    answer: dict[str, Any] = {}

    def in_flight() -> None:
        try:
            response = _post(server, record.paths[MINILM], record.banner.key, IN_FLIGHT)
            answer["status"], answer["body"] = response.status_code, response.json()
        except Exception as exc:  # noqa: BLE001 - recorded, asserted in the test
            answer["error"] = repr(exc)

    client = threading.Thread(target=in_flight)
    client.start()
    time.sleep(0.5)  # the request is accepted and computing
    server.stop(signal.SIGTERM)
    client.join(60)
    record.in_flight = answer
    record.data_after_first_run = server.data_bytes()

    # -- second run on the same data directory --------------------------------------------------------
    server.start()
    if INT8:  # the precision is stored with the endpoint
        assert server.wait_status("shop", "fast")["status"] == "Live"
        _int8_answers(server, record, 2)
    record.endpoints_after = server.admin("GET", "/api/admin/endpoints").json()["endpoints"]
    record.projects_after = server.admin("GET", "/api/admin/projects").json()["projects"]
    for name in record.keys:
        response = _post(server, record.paths[name], record.keys[name], [TEXT])
        record.after[name] = (response.status_code, response.json())
    record.after["old bulk key"] = _post(server, record.paths["bulk"], record.old_key, [TEXT]).status_code
    record.after["live, two inputs"] = _post(server, record.paths["live"], record.keys["live"],
                                             [TEXT, TEXT]).json()
    server.stop(signal.SIGINT)  # Ctrl+C in the terminal that runs `e5studio serve`
    return record


def _int8_endpoint(server: ServerProcess, record: Story) -> None:
    """Run 1: create ``shop/fast`` with precision int8, record what the CLI and /v1/models say and its answers."""
    int8 = record.int8
    created = server.cli("endpoints", "create", "shop", "fast", "--model", MINILM, "--precision", "int8")
    assert created.returncode == 0, created.stderr
    body = json_prefix(created.stdout)
    int8.view, int8.key = body["endpoint"], body["key"]
    int8.path = int8.view["urls"]["nlp"].removeprefix(server.base_url)
    assert server.wait_status("shop", "fast")["status"] == "Live"
    _int8_answers(server, record, 1)
    int8.listed = server.cli("endpoints", "list").stdout
    with httpx.Client(base_url=server.base_url, timeout=30, trust_env=False) as client:
        int8.models = client.get("/v1/models", headers={"Authorization": f"Bearer {int8.key}"}).json()["data"]
    refused = server.cli("endpoints", "create", "shop", "odd", "--model", MINILM, "--precision", "int4")
    int8.refused = (refused.returncode, refused.stderr)
    if "bf16" not in cpu_features().precisions:
        half = server.cli("endpoints", "create", "shop", "half", "--model", MINILM, "--precision", "bf16")
        int8.half = (half.returncode, half.stderr)


def _int8_answers(server: ServerProcess, record: Story, run: int) -> None:
    """Run ``run``'s answers of the int8 endpoint and of the default (fp32, same model) one to INT8_TEXTS."""
    endpoints = (("fast", record.int8.path, record.int8.key), (MINILM, record.paths[MINILM], record.keys[MINILM]))
    for name, path, key in endpoints:
        answer = _post(server, path, key, INT8_TEXTS)
        assert answer.status_code == 200, answer.text
        record.int8.answers[f"run {run}, {name}"] = np.asarray(answer.json()["data"], dtype=np.float32)


def test_first_run_answers_with_current_keys_only(story: Story) -> None:
    assert story.before == {MINILM: 200, "live": 200, "bulk": 200, "old bulk key": 401, "made-up key": 401}


def test_sigterm_lets_the_in_flight_request_finish(story: Story, embed: Embed) -> None:
    assert story.in_flight.get("status") == 200, story.in_flight
    log = story.server.stderr(1)
    answered = log.index('"inputs": 32')
    assert log.index("Shutting down") < answered < log.index("Application shutdown complete."), \
        "the request was in flight when SIGTERM arrived and was answered before the server stopped"
    assert_vectors(story.in_flight["body"]["data"], embed(IN_FLIGHT))


def test_shutdown_runs_the_lifespan_to_the_end(story: Story) -> None:
    for run in (1, 2):
        assert "Application shutdown complete." in story.server.stderr(run), story.server.stderr(run)
        assert "Finished server process" in story.server.stderr(run)


def test_sigterm_exits_with_status_0(story: Story) -> None:
    """``cmd_serve`` returns 0 after ``uvicorn.Server.run()``; a process manager's SIGTERM is a normal stop."""
    assert story.server.returncodes[0] == 0, (
        f"exit status {story.server.returncodes[0]} after SIGTERM (negative: killed by that signal)")
    assert "Traceback" not in story.server.stderr(1)


def test_ctrl_c_exits_without_a_traceback(story: Story) -> None:
    stderr = story.server.stderr(2)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert story.server.returncodes[1] == 0, f"exit status {story.server.returncodes[1]} after SIGINT"


def test_restart_prints_no_admin_token_and_creates_no_default_endpoint(story: Story) -> None:
    stdout = story.server.stdout(2)
    assert "Admin token" not in stdout and "key (shown once)" not in stdout, stdout
    assert not SECRET_RE.search(stdout), stdout
    assert "Serving on " in stdout
    assert [e["id"] for e in story.endpoints_after] == [e["id"] for e in story.endpoints_before]
    assert len(story.endpoints_after) == (4 if INT8 else 3)
    assert [p["id"] for p in story.projects_after] == [p["id"] for p in story.projects_before]


def test_endpoints_come_back_live(story: Story) -> None:
    before = {e["id"]: e for e in story.endpoints_before}
    for endpoint in story.endpoints_after:
        assert endpoint["status"] == "Live", endpoint
        assert endpoint["status_reason"] == ""
        old = before[endpoint["id"]]
        for name in ("name", "project_id", "model", "batch_size", "precision", "created_at", "key_prefix"):
            assert endpoint[name] == old[name], name


def test_keys_still_work_after_restart(story: Story, embed: Embed) -> None:
    for name in story.keys:
        status, body = story.after[name]
        assert status == 200, (name, body)
        assert_vectors(body["data"], embed([TEXT]))
    assert story.after["old bulk key"] == 401
    assert "Expected a Tensor with batch size <= 1, got batch size: 2" in \
        story.after["live, two inputs"]["error"]["message"]


def test_no_key_or_token_in_logs_or_database(story: Story) -> None:
    server = story.server
    secrets = server.secrets
    assert story.banner.admin_token in secrets and story.old_key in secrets
    assert all(key in secrets for key in story.keys.values())
    for run in (1, 2):
        assert_no_secrets(f"stderr of run {run}", server.stderr(run), secrets)
    assert_no_secrets("stdout of run 1 after the banner", server.stdout_after_banner(1), secrets)
    assert_no_secrets("stdout of run 2", server.stdout(2), secrets)
    for when, files in (("after the first run", story.data_after_first_run), ("at the end", server.data_bytes())):
        assert any(name.startswith("e5studio.db") for name in files), files.keys()
        everything = b"".join(files.values())
        assert b"bulk" in everything, "the database files were read"
        for name, data in files.items():
            assert_no_secrets(f"{name} {when}", data, secrets)


@pytest.mark.skipif(not INT8, reason="this torch build has no FBGEMM kernels")
def test_an_int8_endpoint_answers_int8_vectors_beside_fp32_also_after_the_restart(story: Story, minilm_dir: Path,
                                                                                   minilm_embedder: Embedder) -> None:
    """An endpoint created with precision int8 answers with int8 vectors, also after a restart; fp32 beside it on
    the same model stays fp32; the CLI, the admin API and /v1/models show the precision."""
    int8 = Embedder.load(EngineSettings(model=str(minilm_dir), device="cpu", precision="int8"))
    expected = {"fast": int8.embed(INT8_TEXTS), MINILM: minilm_embedder.embed(INT8_TEXTS)}
    assert np.abs(expected["fast"] - expected[MINILM]).max() > 1e-3  # the two precisions are distinguishable
    record = story.int8
    assert sorted(record.answers) == sorted(f"run {run}, {name}" for run in (1, 2) for name in expected)
    for label, vectors in record.answers.items():
        np.testing.assert_allclose(vectors, expected[label.split(", ")[1]], rtol=0, atol=1e-5, err_msg=label)
    assert record.view["precision"] == "int8"
    assert "shop/fast" in record.listed and "precision=int8" in record.listed, record.listed
    assert [(m["id"], m["precision"]) for m in record.models] == [("fast", "int8")]
    assert record.models[0]["kernels"] == cpu_features().describe()  # the kernel set the CPU computes with
    assert record.refused[0] != 0 and "int4" in record.refused[1]
    if "bf16" not in cpu_features().precisions:  # refused when created, with the reason, and not recorded
        assert record.half is not None and record.half[0] != 0 and "native bf16" in record.half[1], record.half
        assert "half" not in {e["name"] for e in story.endpoints_after}
    assert {e["name"]: e["precision"] for e in story.endpoints_after}["fast"] == "int8"
