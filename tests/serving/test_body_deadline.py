"""The body deadline counts from when a request's first bytes reached the machine (``edge.ARRIVED_KEY``, stamped
by the server's HTTP protocol from the kernel's age of the connection's data), not from when the server read them
or the edge got to them: a request that waited behind a flood of others is not given that wait on top of its
deadline."""

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


def test_a_connection_the_server_reads_late_gets_its_408_by_its_own_clock() -> None:
    """A real server whose event loop is busy for 1.5 s (as under a flood of connections): a client that sent half
    a body meanwhile waits in the kernel's queue, and its 408 comes when its 1 s deadline is over counted from when
    its bytes arrived (the kernel's age of them), not 1 s after the server got to it."""
    import socket
    import threading

    import uvicorn
    from starlette.responses import JSONResponse

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/busy":
            time.sleep(1.5)  # noqa: ASYNC251 - the point: the loop reads nothing meanwhile
        else:
            while (await receive()).get("more_body"):
                pass
        await JSONResponse({"ok": True})(scope, receive, send)

    async def answer(request: Any, exc: Exception, request_id: str) -> Any:
        return JSONResponse({"error": type(exc).__name__}, status_code=408 if isinstance(exc, BodyTimeoutError)
                            else 500)

    protocol = arrival_stamped_protocol()
    if protocol == "auto":
        pytest.skip("httptools is not installed: uvicorn's own protocol, no stamp")
    edge = Edge(app, metrics=Metrics(), timeout_s=1.0, answer=answer, unauthenticated={})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(edge, host="127.0.0.1", port=port, http=protocol, log_config=None,
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        busy = socket.create_connection(("127.0.0.1", port))
        busy.sendall(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)  # the loop is in its 1.5 s sleep now
        late = socket.create_connection(("127.0.0.1", port), timeout=10)
        late.sendall(b"POST /half HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        sent = time.monotonic()
        answer_head = late.recv(4096)
        waited = time.monotonic() - sent
        busy.close()
        late.close()
    finally:
        server.should_exit = True
        thread.join(10)
    assert answer_head.startswith(b"HTTP/1.1 408"), answer_head[:100]
    # read ~1.3 s after it arrived: counted from the server's read, the 408 would come at ~2.3 s
    assert 0.95 <= waited < 1.8, waited
