"""ASGI middleware at the edge of every request: a deadline for reading the request body, and a guard that
turns any exception that escaped the error handlers into an answer instead of a dropped connection.

    BodyDeadline -> CrashGuard -> (access log, routes, the one error handler)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from e5studio.errors import BodyTimeoutError

Answer = Callable[[Request, Exception, str], Awaitable[Response]]

MIN_BODY_RATE = 64 * 1024  # bytes/s a client must keep up beyond the base timeout (large uploads)


class BodyDeadline:
    """The request body must arrive within ``timeout_s`` plus the time its declared length takes at
    ``MIN_BODY_RATE``; a route still reading then gets BodyTimeoutError (HTTP 408), so a client that sends
    half a body holds its connection for seconds, not forever."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or ()).get(b"content-length", b"0")
        declared = int(length) if length.isdigit() else 0
        deadline = time.monotonic() + self.timeout_s + declared / MIN_BODY_RATE
        body_done = False

        async def limited() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()  # after the body: only the disconnect is left to wait for
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise BodyTimeoutError(f"the request body did not arrive within {self.timeout_s:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, limited, send)


class CrashGuard:
    """Any exception the error handlers did not answer becomes the one error answer (JSON 500 with a request
    id, logged with its traceback by ``answer``), so neither the connection nor the server dies."""

    def __init__(self, app: ASGIApp, answer: Answer) -> None:
        self.app = app
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # noqa: BLE001 - the one place nothing may escape
            if started:  # the answer is half sent: nothing left to say; the server logs it
                raise
            response = await self.answer(Request(scope, receive), exc, uuid.uuid4().hex[:16])
            await response(scope, receive, send)
