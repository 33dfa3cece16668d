"""One JSON access-log line per request (no texts, no keys) and the request metrics of inference routes.

What a request did (its endpoint, how many texts and tokens, the kind of error it got) is written into its
:class:`CallRecord` as the request proceeds; the middleware reads it when the answer is sent.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from e5studio.serving.metrics import Metrics
from e5studio.serving.urls import INFERENCE_PREFIXES

access_log = logging.getLogger("e5studio.access")
_SCOPE_KEY = "call"


@dataclass
class CallRecord:
    """What one request did, for the access log and the metrics."""

    endpoint: str = ""
    endpoint_id: str = ""
    inputs: int | None = None
    tokens: int | None = None
    error_type: str | None = None


def call_record(request: Request) -> CallRecord:
    """The record of ``request`` (made on first use; kept in the request's ASGI scope state)."""
    state = request.scope.setdefault("state", {})
    record = state.get(_SCOPE_KEY)
    if not isinstance(record, CallRecord):
        record = state[_SCOPE_KEY] = CallRecord()
    return record


class AccessLog:
    """Pure ASGI middleware: one JSON access-log line per request and the request metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            record = scope.get("state", {}).get(_SCOPE_KEY) or CallRecord()
            route = getattr(scope.get("route"), "path", "unmatched")  # a template, never a raw path
            if scope["path"].startswith(INFERENCE_PREFIXES):
                if record.endpoint_id:
                    self.metrics.endpoint_stats.record(record.endpoint_id, status, elapsed)
                self.metrics.requests.labels(route, record.endpoint, str(status)).inc()
                self.metrics.request_seconds.labels(route).observe(elapsed)
                if status >= 400:
                    self.metrics.failures.labels(route, record.endpoint, record.error_type or str(status)).inc()
            access_log.info(json.dumps({
                "method": scope["method"], "route": route, "status": status, "ms": round(elapsed * 1000, 2),
                "endpoint": record.endpoint, "inputs": record.inputs, "tokens": record.tokens,
                "error": record.error_type, "client": (scope.get("client") or ("", 0))[0],
            }))
