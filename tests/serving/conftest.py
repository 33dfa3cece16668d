"""Fixtures of the serving tests: one real ``e5studio serve`` (MiniLM) shared by the session, HTTP helpers.

The shared server is stopped at the end of the session; its teardown asserts a clean exit and that no key or
token it ever handed out appears in clear in its logs (stderr, stdout after the start-up banner) or in any
file of its data directory.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e5studio.engine.embedder import Embedder
from tests.serving.server import Banner, ServerProcess, assert_no_secrets, assert_vectors


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Iterator[ServerProcess]:
    """``e5studio serve --model all-minilm-l6-v2`` on a fresh data directory and a free loopback port."""
    root = tmp_path_factory.mktemp("serve")
    proc = ServerProcess(root / "data", root / "logs")
    proc.start()
    yield proc
    code = proc.stop()
    # graceful: lifespan shutdown ran (workers finished); the exact exit status is tested in test_restart.py
    assert code in (0, -signal.SIGTERM), f"e5studio serve exited with {code} after SIGTERM:\n{proc.stderr()}"
    assert "Application shutdown complete." in proc.stderr(), proc.stderr()
    assert "Traceback" not in proc.stderr(), proc.stderr()
    assert len(proc.secrets) >= 2
    assert_no_secrets("server stderr (access logs)", proc.stderr(), proc.secrets)
    assert_no_secrets("server stdout after the banner", proc.stdout_after_banner(1), proc.secrets)
    for name, data in proc.data_bytes().items():
        assert_no_secrets(f"data dir file {name}", data, proc.secrets)


@pytest.fixture(scope="session")
def banner(server: ServerProcess) -> Banner:
    return server.banner()


@pytest.fixture(scope="session")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120, trust_env=False) as client:
        yield client


@pytest.fixture(scope="session")
def nlp_path(banner: Banner) -> str:
    """The default endpoint's SambaStudio NLP path (by ids, as printed)."""
    return f"/api/predict/nlp/{banner.project_id}/{banner.endpoint_id}"


@pytest.fixture(scope="session")
def embed(minilm_embedder: Embedder) -> Any:
    """``Embedder.embed`` in-process: the reference every HTTP answer is compared with."""
    return minilm_embedder.embed


@pytest.fixture()
def still_serving(http: httpx.Client, nlp_path: str, banner: Banner, embed: Any) -> Iterator[None]:
    """After the test: a good request still gets the right vector."""
    yield
    answer = http.post(nlp_path, json={"inputs": ["query: still serving?"]}, headers={"key": banner.key})
    assert answer.status_code == 200, answer.text
    assert_vectors(answer.json()["data"], embed(["query: still serving?"]))
