"""Inference through a control-store outage ("fail static", issue 25 point 2), for real: a server on a
PostgreSQL store that it reaches through a proxy which the test cuts (every connection reset, new ones
refused) and mends.

While the store is away, a key that opened its endpoint at the replica's last read of the store still opens it
(the answer is the same vectors); any other key, and an endpoint the copy does not hold, gets 503 with
Retry-After, never a 500 or a hang; one log line says so per outage, and the metrics count it. Once the store is
back, keys are checked against it again (a wrong key is 401 again).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from e5studio.app import create_app
from e5studio.control.store import Store
from e5studio.serving.inference import FRESH_S
from e5studio.settings import EngineSettings, ServeSettings
from tests.conftest import PostgresDatabases

TEXTS = ["query: what does the store do", "passage: it keeps the endpoints and their keys"]
WRONG_KEY = "e5s_" + "W" * 43


class CuttableProxy:
    """A proxy for PostgreSQL's Unix socket that a test can cut and mend."""

    def __init__(self, socket_path: Path) -> None:
        self.target = str(socket_path)
        self.directory = Path(tempfile.mkdtemp(prefix="e5s-pgproxy-"))
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.directory / socket_path.name))  # the same port number in the name
        self.listener.listen(64)
        self.open = True
        self.frozen = threading.Event()  # set: bytes are held, nothing is relayed (a hung server)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="pg-proxy").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:  # refused: closed before a byte is answered
                client.close()
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.frozen.is_set():
                    time.sleep(0.02)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                _close(s)

    def cut(self) -> None:
        self.open = False
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            _close(s)

    def mend(self) -> None:
        self.open = True
        self.frozen.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


@dataclass
class Outage:
    client: TestClient
    proxy: CuttableProxy
    path: str
    key: str
    token: str

    def embed(self, key: str, path: str | None = None) -> Any:
        return self.client.post(path or self.path, json={"inputs": TEXTS}, headers={"key": key})

    def metric(self, name: str) -> float:
        answer = self.client.get("/metrics")  # anonymous: the counts, without asking the store for a token
        assert answer.status_code == 200, answer.text
        text = answer.text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
                   or line.startswith(name + "_total "))


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path,
           pg_databases: PostgresDatabases) -> Iterator[Outage]:
    url = pg_databases.migrated()
    real = sa.make_url(url)
    socket_dir = Path(str(real.query["host"]))
    proxy = CuttableProxy(next(socket_dir.glob(".s.PGSQL.*")))
    proxied = real.update_query_dict({"host": str(proxy.directory)}).render_as_string(hide_password=False)
    direct = Store(url)
    direct.create_project("p")
    endpoint, key = direct.create_endpoint("p", "e", str(tiny_dir), 32)
    token = direct.ensure_admin_token()
    assert token is not None
    settings = ServeSettings(data_dir=tmp_path_factory.mktemp("outage"), store=proxied, default_model=str(tiny_dir),
                             engine=EngineSettings(model=str(tiny_dir), device="cpu"))
    store = Store(proxied)
    try:
        with TestClient(create_app(settings, store)) as client:
            yield Outage(client, proxy, f"/api/predict/nlp/p/{endpoint.name}", key, token)
    finally:
        proxy.mend()
        store.close()
        direct.close()
        proxy.close()
        pg_databases.drop(url)


def _until(check: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.05)


def test_a_store_outage_keeps_known_keys_served_and_answers_503_to_the_rest(
        outage: Outage, caplog: pytest.LogCaptureFixture) -> None:
    o = outage
    _until(lambda: o.embed(o.key).status_code == 200, 60)
    before = o.embed(o.key).json()["data"]
    assert o.embed(WRONG_KEY).status_code == 401
    assert o.metric("e5studio_store_reachable") == 1

    with caplog.at_level(logging.WARNING, logger="e5studio"):
        o.proxy.cut()
        time.sleep(2 * FRESH_S)  # the copy is older than FRESH_S: only the outage lets it be used
        for _ in range(5):
            started = time.monotonic()
            answer = o.embed(o.key)
            assert answer.status_code == 200, answer.text
            assert answer.json()["data"] == before
            assert time.monotonic() - started < 5  # nothing waits on the store
        openai = o.client.post("/v1/embeddings", json={"model": "e", "input": TEXTS[0]},
                               headers={"Authorization": f"Bearer {o.key}"})
        assert openai.status_code == 200, openai.text
        for refused in (o.embed(WRONG_KEY), o.embed(o.key, "/api/predict/nlp/p/unknown"),
                        o.embed(o.key, "/api/predict/nlp/other/e")):
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["Retry-After"]) >= 1
            assert "control store cannot be reached" in refused.json()["error"]["message"]
        assert o.metric("e5studio_store_reachable") == 0
        assert o.metric("e5studio_store_outages") == 1
        assert o.metric("e5studio_fail_static_requests") >= 6
        outage_lines = [r for r in caplog.records if "control store cannot be read" in r.getMessage()]
        assert len(outage_lines) == 1, [r.getMessage() for r in outage_lines]

        o.proxy.mend()
        _until(lambda: o.embed(WRONG_KEY).status_code == 401, 10)  # checked against the store again
    assert o.embed(o.key).json()["data"] == before
    assert o.metric("e5studio_store_reachable") == 1
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_a_hung_store_keeps_known_keys_served_within_seconds(outage: Outage) -> None:
    o = outage
    _until(lambda: o.embed(WRONG_KEY).status_code == 401, 60)  # the store answers (after the test above)
    before = o.embed(o.key).json()["data"]
    o.proxy.frozen.set()  # connections stay open, nothing comes back: without bounds, every request would hang
    try:
        time.sleep(2 * FRESH_S)
        for _ in range(5):
            started = time.monotonic()
            answer = o.embed(o.key)
            assert answer.status_code == 200, answer.text
            assert answer.json()["data"] == before
            assert time.monotonic() - started < 3
        started = time.monotonic()
        refused = o.embed(WRONG_KEY)
        assert refused.status_code == 503 and "Retry-After" in refused.headers, refused.text
        assert time.monotonic() - started < 3
    finally:
        o.proxy.mend()
    _until(lambda: o.embed(WRONG_KEY).status_code == 401, 30)
