"""The server's edges in-process (tiny random checkpoint): admission before any tokenising, 429 with
Retry-After, failed-login throttling per client address, the body read deadline, the crash guard."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from e5studio.app import create_app
from e5studio.control.store import Store
from e5studio.engine.embedder import Embedder
from e5studio.errors import CapacityError, InputError
from e5studio.serving.batcher import Batcher, QueueLimits, estimate_tokens
from e5studio.serving.state import state_of
from e5studio.serving.throttle import LoginThrottle
from e5studio.settings import EngineSettings, ServeSettings
from tests.serving.server import assert_error

TOKENS: dict[str, str] = {}  # the edge app's admin token

# -- admission ------------------------------------------------------------------------------------------


class _Gate:
    """An engine that blocks until released, counting calls."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, seqs: Sequence[np.ndarray]) -> np.ndarray:
        self.calls += 1
        self.release.wait(30)
        return np.zeros((len(seqs), 4), dtype=np.float32)


def test_reserve_refuses_by_requests_tokens_and_wait() -> None:
    gate = _Gate()
    batcher = Batcher(gate, limits=QueueLimits(max_requests=3, max_tokens=1000, max_wait_s=5.0))
    try:
        held = [batcher.reserve(100), batcher.reserve(100), batcher.reserve(100)]
        with pytest.raises(CapacityError, match="3 requests queued") as by_requests:
            batcher.reserve(1)
        assert by_requests.value.retry_after_s >= 1.0
        held.pop().release()
        with pytest.raises(CapacityError, match="tokens queued"):
            batcher.reserve(900)
        held.pop().release()
        held.pop().release()
        batcher.reserve(5000).release()  # alone in the queue, one request is always let in
        batcher._tokens_per_s = 100.0  # measured: 100 tokens/s
        first = batcher.reserve(300)
        with pytest.raises(CapacityError, match="expected wait is 6.0 s") as by_wait:
            batcher.reserve(300)
        assert by_wait.value.retry_after_s == pytest.approx(6.0)
        first.release()
        batcher.reserve(300).release()
    finally:
        gate.release.set()
        batcher.close()


def test_estimate_errs_high_and_is_capped() -> None:
    assert estimate_tokens(["a" * 3000], 512) == 512
    assert estimate_tokens(["hello world"], 512) >= 4
    assert estimate_tokens(["", "abc"], 512) == 2 + 3


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def edge_app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             tiny_dir: Path) -> Iterator[tuple[Any, Store, str, str]]:
    """The app in-process: queue of 2 requests, body timeout 0.5 s; (app, store, nlp path, key); on the SQLite
    store of its data dir, and on a PostgreSQL store."""
    data_dir = tmp_path_factory.mktemp("edges")
    url = request.getfixturevalue("pg_databases").migrated() if request.param == "postgres" else None
    store = Store(url or data_dir / "e5studio.db")
    store.create_project("p")
    endpoint, key = store.create_endpoint("p", "tiny", str(tiny_dir), 32)
    token = store.ensure_admin_token()
    assert token is not None
    TOKENS["admin"] = token
    settings = ServeSettings(data_dir=data_dir, max_queue=2, body_timeout_s=0.5, default_model=str(tiny_dir),
                             engine=EngineSettings(model=str(tiny_dir), device="cpu"), store=url)
    app = create_app(settings, store)
    with TestClient(app):
        assert state_of(app).pool.wait(60)
        yield app, store, f"/api/predict/nlp/p/{endpoint.name}", key
    store.close()
    if url is not None:
        request.getfixturevalue("pg_databases").drop(url)


def test_overload_is_refused_before_tokenising(edge_app: tuple[Any, Store, str, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    app, store, path, key = edge_app
    embedder, batcher = state_of(app).pool.get(store.get_endpoint("p", "tiny"))
    tokenised: list[int] = []
    original = Embedder.tokenize

    def counting(self: Embedder, texts: list[str], *args: Any) -> list[np.ndarray]:
        tokenised.append(len(texts))
        return original(self, texts, *args)

    monkeypatch.setattr(Embedder, "tokenize", counting)
    held = [batcher.reserve(10), batcher.reserve(10)]  # the queue is full (max_queue=2)
    try:
        client = TestClient(app)  # no `with`: the fixture's client runs the app's lifespan
        started = time.perf_counter()
        answer = client.post(path, json={"inputs": ["query: " + "long text " * 50_000]}, headers={"key": key})
        elapsed = time.perf_counter() - started
        assert_error(answer, 429, "2 requests queued")  # type: ignore[arg-type]
        assert int(answer.headers["retry-after"]) >= 1
        assert tokenised == []  # refused before any tokenising
        assert elapsed < 1.0
    finally:
        for reservation in held:
            reservation.release()
    assert client.post(path, json={"inputs": ["query: ok"]}, headers={"key": key}).status_code == 200
    assert tokenised == [1]
    assert batcher._queued_tokens == 0 and batcher._reserved == 0  # every place given back


def test_a_failed_tokenising_gives_its_place_back(edge_app: tuple[Any, Store, str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    app, store, path, key = edge_app
    _, batcher = state_of(app).pool.get(store.get_endpoint("p", "tiny"))

    def refuse(*_: object) -> None:
        raise InputError("input 0 cannot be tokenised")

    monkeypatch.setattr(Embedder, "tokenize", refuse)
    client = TestClient(app)
    for _ in range(5):  # more than the queue holds: each refused request released its place
        answer = client.post(path, json={"inputs": ["query: x"]}, headers={"key": key})
        assert_error(answer, 400, "cannot be tokenised")  # type: ignore[arg-type]
    assert batcher._reserved == 0 and batcher._queued_tokens == 0


# -- body read deadline ---------------------------------------------------------------------------------


def test_half_a_body_is_answered_408_within_the_timeout(edge_app: tuple[Any, Store, str, str]) -> None:
    """A client that declares a body and sends half of it gets 408 after body_timeout_s (0.5 s here)."""
    app, _, path, key = edge_app
    sent: list[dict[str, Any]] = []

    async def call() -> float:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"content-length", b"100"), (b"content-type", b"application/json"),
                             (b"key", key.encode())], "client": ("127.0.0.1", 1), "server": ("testserver", 80),
                 "state": {}}
        parts = [{"type": "http.request", "body": b'{"inputs": [', "more_body": True}]

        async def receive() -> dict[str, Any]:
            if parts:
                return parts.pop()
            await asyncio.sleep(3600)  # the rest never comes
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        started = time.perf_counter()
        await app(scope, receive, send)
        return time.perf_counter() - started

    elapsed = asyncio.run(call())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 408
    assert b"did not arrive within 0.5 s" in b"".join(m.get("body", b"") for m in sent[1:])
    assert 0.4 < elapsed < 5


# -- crash guard ------------------------------------------------------------------------------------------


def test_an_unexpected_exception_is_a_json_500_with_a_request_id(edge_app: tuple[Any, Store, str, str],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    app, store, _, _ = edge_app

    def broken(*_: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(store, "list_projects", broken)
    token = TOKENS["admin"]
    client = TestClient(app, raise_server_exceptions=False)
    answer = client.get("/api/admin/projects", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert error["message"] == "internal error: KeyError" and error["type"] == "server_error"
    assert len(error["request_id"]) == 16 and answer.headers["x-request-id"] == error["request_id"]
    assert error["request_id"] in caplog.text and "a bug" in caplog.text  # logged with the traceback
    assert client.get("/health").status_code == 200


# -- failed-login throttling ------------------------------------------------------------------------------


def test_throttle_counts_failures_per_address_in_a_window() -> None:
    now = [1000.0]
    throttle = LoginThrottle(limit=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        throttle.check("a")
        throttle.failed("a")
    with pytest.raises(CapacityError, match="3 in the last 60 s") as refused:
        throttle.check("a")
    assert refused.value.retry_after_s == pytest.approx(60)
    throttle.check("b")  # another address is not affected
    now[0] += 30
    with pytest.raises(CapacityError) as later:
        throttle.check("a")
    assert later.value.retry_after_s == pytest.approx(30)
    now[0] += 31
    throttle.check("a")  # the failures left the window


def test_failed_admin_and_ui_logins_are_throttled_per_address(edge_app: tuple[Any, Store, str, str]) -> None:
    app, store, _, _ = edge_app
    token = TOKENS["admin"]
    attacker = TestClient(app, client=("10.0.0.66", 5000))
    other = TestClient(app, client=("10.0.0.7", 5000))
    for i in range(10):
        wrong = attacker.get("/api/admin/projects", headers={"Authorization": f"Bearer e5sadm_wrong{i}"})
        assert wrong.status_code == 403, wrong.text
    refused = attacker.get("/api/admin/projects", headers={"Authorization": f"Bearer {token}"})
    assert_error(refused, 429, "too many failed logins")  # type: ignore[arg-type]
    assert 50 <= int(refused.headers["retry-after"]) <= 60
    login = attacker.post("/ui/login", data={"token": token, "next": "/ui/"}, follow_redirects=False)
    assert login.status_code == 429 and "retry-after" in login.headers
    # the right token still works from other addresses, in the admin API and in the UI
    assert other.get("/api/admin/projects", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert other.post("/ui/login", data={"token": token, "next": "/ui/"}, follow_redirects=False).status_code == 303
    ui_attacker = TestClient(app, client=("10.0.0.99", 5000))
    for _ in range(10):
        assert ui_attacker.post("/ui/login", data={"token": "nope", "next": "/ui/"}).status_code == 401
    assert ui_attacker.post("/ui/login", data={"token": token, "next": "/ui/"}).status_code == 429


def test_calibrate_measures_tokens_per_second_before_the_first_request() -> None:
    seen: list[int] = []

    def engine(seqs: Sequence[np.ndarray]) -> np.ndarray:
        seen.append(sum(len(s) for s in seqs))
        time.sleep(0.05)
        return np.zeros((len(seqs), 4), dtype=np.float32)

    batcher = Batcher(engine, limits=QueueLimits(max_wait_s=1.0))
    try:
        rate = batcher.calibrate(sequences=4, length=16)
        assert seen == [64] and 64 / 0.5 < rate <= 64 / 0.05
        first = batcher.reserve(int(rate * 0.8))  # alone: always let in
        with pytest.raises(CapacityError, match="expected wait"):
            batcher.reserve(int(rate * 0.5))  # 1.3 s of work queued > 1 s
        first.release()
    finally:
        batcher.close()
