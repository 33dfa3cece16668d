"""The body deadline counts from when the server read a request's first bytes (``edge.ARRIVED_KEY``, stamped by
the server's HTTP protocol), not from when the edge got to it: a request that waited behind a flood of others
is not given that wait on top of its deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from e5studio.errors import BodyTimeoutError
from e5studio.serving.edge import ARRIVED_KEY, Edge, Metrics, arrival_stamped_protocol


def _edge(timeout_s: float) -> Edge:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the route reads its body

    async def answer(request: Any, exc: Exception, request_id: str) -> Any:
        raise exc  # the test sees what the edge would answer

    return Edge(app, metrics=Metrics(), timeout_s=timeout_s, answer=answer, unauthenticated={})


def _scope(state: dict[str, Any]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/v1/embeddings", "headers": [(b"content-length", b"10")],
            "state": state}


async def _run(edge: Edge, scope: dict[str, Any]) -> float:
    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)  # a client that never sends its body
        return {}

    async def send(message: Any) -> None:
        pass

    started = time.monotonic()
    with pytest.raises(BodyTimeoutError):
        await edge(scope, receive, send)
    return time.monotonic() - started


def test_the_deadline_counts_from_the_first_bytes_read() -> None:
    edge = _edge(timeout_s=2.0)
    queued = asyncio.run(_run(edge, _scope({ARRIVED_KEY: time.monotonic() - 1.8})))  # read 1.8 s ago
    assert queued < 1.0, queued
    unstamped = asyncio.run(_run(_edge(timeout_s=0.3), _scope({})))  # no stamp: from when the edge sees it
    assert unstamped >= 0.3, unstamped


def test_the_servers_protocol_stamps_each_request() -> None:
    protocol = arrival_stamped_protocol()
    if protocol == "auto":
        pytest.skip("httptools is not installed: uvicorn's own protocol, no stamp")

    before = time.monotonic()
    stamped = protocol.__new__(protocol)
    stamped.asgi_version, stamped.server, stamped.client, stamped.scheme = "3.0", None, None, "http"
    stamped.root_path, stamped.app_state = "", {"kept": 1}
    stamped.on_message_begin()
    assert before <= stamped.scope["state"][ARRIVED_KEY] <= time.monotonic()
    assert stamped.scope["state"]["kept"] == 1
