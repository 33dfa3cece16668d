"""The edge of every request, one ASGI layer (:class:`Edge`), and the server's metrics.

Around each request, in one pass: a deadline for its body (HTTP 408), a small body limit and a fixed deadline
on the routes that read a body before knowing who sends it (the login form), a guard that turns an exception
nobody answered into a JSON 500 with a request id (the connection and the server survive), a client that left
mid-body noted as one info line, and one JSON access-log line per request (no texts, no keys) with the
request metrics of the inference routes.

What a request did (its endpoint, how many texts and tokens, the kind of error it got) is written into its
:class:`CallRecord` as the request proceeds; the edge reads it when the request is over.

The inference routes (:class:`DirectRoute`) are called from here straight away, their dependencies bound once
when the app is built: the framework's router (which re-checks every included router's route list per
request), its dependency solving and its exception layers cost more CPU than the rest of a small query. The
same routes stay declared on the app (the OpenAPI document; any other method goes to the framework and gets its
405); their errors get the app's one error answer (``answer_error``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from e5studio.errors import BodyTimeoutError, PayloadTooLargeError
from e5studio.serving.urls import INFERENCE_PREFIXES

access_log = logging.getLogger("e5studio.access")
Answer = Callable[[Request, Exception, str], Awaitable[Response]]
MIN_BODY_RATE = 64 * 1024  # bytes/s a client must keep up beyond the base timeout (large uploads)
# scope["state"][ARRIVED_KEY]: time.monotonic() when the request's first bytes reached this machine (set by the
# server's HTTP protocol, ``arrival_stamped_protocol``: the kernel's age of the connection's data, else when the
# server read them); the body's deadline counts from then, so requests that arrive in a flood are not given the
# time they queued, unaccepted or unread, on top (absent: from when the edge sees them)
ARRIVED_KEY = "e5studio.arrived"
_SCOPE_KEY = "call"
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class CallRecord:
    """What one request did, for the access log and the metrics."""

    endpoint: str = ""
    endpoint_id: str = ""
    inputs: int | None = None
    tokens: int | None = None
    error_type: str | None = None


@dataclass(frozen=True)
class DirectRoute:
    """A route the edge calls itself: ``call(request, **path_params)`` answers it (dependencies bound)."""

    route: BaseRoute  # what matches the request (and names its route in the log and metrics)
    call: Callable[..., Awaitable[Response]]


def call_record(request: Request) -> CallRecord:
    """The record of ``request`` (made on first use; kept in the request's ASGI scope state)."""
    state = request.scope.setdefault("state", {})
    record = state.get(_SCOPE_KEY)
    if not isinstance(record, CallRecord):
        record = state[_SCOPE_KEY] = CallRecord()
    return record


class Edge:
    """Pure ASGI middleware around the app (the one error handler inside it answers what routes raise).

    ``timeout_s``: the body must arrive within it plus the time its declared length takes at
    ``MIN_BODY_RATE``, so a client that sends half a body holds its connection for seconds, not forever.
    ``unauthenticated``: path -> body limit of the routes that read a body before any credential is checked;
    there the deadline is ``timeout_s`` whatever the declared length, and a body over the limit is refused
    (HTTP 413) before it is read. ``answer``: the error answer of a crash (logs it, JSON 500 with the id).
    ``direct``: routes called from here (see the module's docstring); the exceptions of ``handled`` they raise
    get ``answer_error``'s answer, as the app's handler gives them. ``on_write``: called when the answer to a
    request that may change something (not GET/HEAD/OPTIONS, not inference) starts, before it is sent."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, timeout_s: float, answer: Answer,
                 unauthenticated: Mapping[str, int], direct: Sequence[DirectRoute] = (),
                 handled: tuple[type[Exception], ...] = (), answer_error: Callable[..., Awaitable[Response]]
                 | None = None, on_write: Callable[[], None] | None = None) -> None:
        self.app = app
        self.on_write = on_write
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.answer = answer
        self.unauthenticated = dict(unauthenticated)
        self.direct = tuple(direct) if answer_error is not None else ()
        self.handled = handled
        self.answer_error = answer_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record = scope.setdefault("state", {})[_SCOPE_KEY] = CallRecord()
        status = 0  # 0: no answer started
        writes = self.on_write is not None and scope["method"] not in _READS \
            and not scope["path"].startswith(INFERENCE_PREFIXES)
        try:
            async def tracked(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    if writes:  # what it changed holds for the next request this client sends
                        self.on_write()  # type: ignore[misc]
                await send(message)

            direct = self._direct_route(scope)
            if direct is None:
                await self.app(scope, self._body_reader(scope, receive), tracked)
            else:
                await self._call_direct(scope, self._body_reader(scope, receive), tracked, *direct)
        except ClientDisconnect:  # the client left while its body was read: no one to answer
            status, record.error_type = 499, "client_disconnected"
        except Exception as exc:  # noqa: BLE001 - the one place nothing may escape
            if status:  # the answer is half sent: nothing left to say; the server logs it
                raise
            response = await self.answer(Request(scope, receive), exc, uuid.uuid4().hex[:16])
            status = response.status_code
            await response(scope, receive, tracked)
        finally:
            self._note(scope, record, status or 500, time.perf_counter() - started)

    def _direct_route(self, scope: Scope) -> tuple[DirectRoute, dict[str, Any]] | None:
        """The direct route that fully matches (path and method) the request, with its path parameters."""
        for direct in self.direct:
            match, child = direct.route.matches(scope)
            if match is Match.FULL:
                return direct, child["path_params"]
        return None

    async def _call_direct(self, scope: Scope, receive: Receive, send: Send, direct: DirectRoute,
                           params: dict[str, Any]) -> None:
        scope["route"], scope["path_params"] = direct.route, params
        request = Request(scope, receive)
        try:
            response = await direct.call(request, **params)
        except self.handled as exc:
            assert self.answer_error is not None
            response = await self.answer_error(request, exc)
        await response(scope, receive, send)

    def _body_reader(self, scope: Scope, receive: Receive) -> Receive:
        """``receive`` under the body's deadline (and, on an unauthenticated route, its size limit)."""
        length = dict(scope.get("headers") or ()).get(b"content-length", b"0")
        declared = int(length) if length.isdigit() else 0
        limit = self.unauthenticated.get(scope["path"])
        grace = declared / MIN_BODY_RATE if limit is None else 0.0
        arrived = (scope.get("state") or {}).get(ARRIVED_KEY)
        deadline = (arrived if isinstance(arrived, float) else time.monotonic()) + self.timeout_s + grace
        received = 0
        body_done = False

        async def limited() -> Message:
            nonlocal body_done, received
            if body_done:
                return await receive()  # after the body: only the disconnect is left to wait for
            if limit is not None and declared > limit:
                raise PayloadTooLargeError(f"request body is {declared} bytes; the limit is {limit}")
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):  # no task per message
                    message = await receive()
            except TimeoutError:
                raise BodyTimeoutError(f"the request body did not arrive within {self.timeout_s:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            if limit is not None and message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes")
            return message

        return limited

    def _note(self, scope: Scope, record: CallRecord, status: int, elapsed: float) -> None:
        """The access-log line and, for an inference route, the request metrics."""
        route = getattr(scope.get("route"), "path", "unmatched")  # a template, never a raw path
        if scope["path"].startswith(INFERENCE_PREFIXES):
            metrics = self.metrics
            if record.endpoint_id:
                metrics.endpoint_stats.record(record.endpoint_id, status, elapsed)
            metrics.child(metrics.requests, route, record.endpoint, str(status)).inc()
            metrics.child(metrics.request_seconds, route).observe(elapsed)
            if status >= 400:
                metrics.child(metrics.failures, route, record.endpoint, record.error_type or str(status)).inc()
        access_log.info(json.dumps({
            "method": scope["method"], "route": route, "status": status, "ms": round(elapsed * 1000, 2),
            "endpoint": record.endpoint, "inputs": record.inputs, "tokens": record.tokens,
            "error": record.error_type, "client": (scope.get("client") or ("", 0))[0],
        }))


# ------------------------------------------------------------------------------------------- metrics

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def arrival_stamped_protocol() -> Any:
    """uvicorn's HTTP protocol (httptools) that notes in each request's scope when its first bytes reached this
    machine (``edge.ARRIVED_KEY``: the body deadline counts from then; see :func:`data_arrived`); uvicorn's own
    choice where httptools is missing."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    class ArrivalStamped(HttpToolsProtocol):
        def on_message_begin(self) -> None:
            super().on_message_begin()
            transport = getattr(self, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            self.scope["state"][ARRIVED_KEY] = data_arrived(sock, time.monotonic())

    return ArrivalStamped


# Linux's struct tcp_info: tcpi_last_data_recv, milliseconds since the connection last received data, is the
# u32 at byte 52 (8 bytes of u8 fields, then 9 u32s, then last_data_sent, last_ack_sent, last_data_recv)
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_LAST_DATA_RECV = struct.Struct("=I")
_LAST_DATA_RECV_AT = 52


def data_arrived(sock: Any, now: float) -> float:
    """When (``time.monotonic()``) the data the server is reading from ``sock`` reached this machine: ``now``
    minus the kernel's age of the connection's latest data (``TCP_INFO``, Linux; at most a few ms coarse), else
    ``now``. A connection opened in a flood waits in the kernel's accept queue, with its first bytes received,
    until the server gets to it: seconds, with hundreds at once. Never earlier than the request's first bytes
    arrived (the latest data is those bytes or later ones)."""
    if _TCP_INFO is None or sock is None:
        return now
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _LAST_DATA_RECV_AT + _LAST_DATA_RECV.size)
    except (OSError, AttributeError, TypeError):  # not TCP (a Unix socket), or no such option here
        return now
    if len(info) < _LAST_DATA_RECV_AT + _LAST_DATA_RECV.size:
        return now
    (age_ms,) = _LAST_DATA_RECV.unpack_from(info, _LAST_DATA_RECV_AT)
    return now - age_ms / 1000.0


class Metrics:
    """Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("e5studio_requests", "Inference requests answered", ["route", "endpoint", "status"],
                                registry=r)
        self.failures = Counter("e5studio_request_failures", "Inference requests that failed",
                                ["route", "endpoint", "reason"], registry=r)
        self.request_seconds = Histogram("e5studio_request_seconds", "Request latency", ["route"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("e5studio_queue_depth", "Requests waiting for the engine", ["model"], registry=r)
        self.queue_seconds = Histogram("e5studio_queue_seconds", "Time a request waited in the queue", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.compute_seconds = Histogram("e5studio_compute_seconds", "Engine time per batch", ["model"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.batch_items = Histogram("e5studio_batch_items", "Texts per engine batch", ["model"],
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.batch_tokens = Histogram("e5studio_batch_tokens", "Real tokens per engine batch", ["model"],
                                      buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768), registry=r)

        self.store_reachable = Gauge("e5studio_store_reachable", "1 while the control store answers, 0 while "
                                     "inference is answered from the replica's last copy of it", registry=r)
        self.store_reachable.set(1)
        self.store_outages = Counter("e5studio_store_outages", "Times the control store could not be read",
                                     registry=r)
        self.fail_static_requests = Counter("e5studio_fail_static_requests", "Inference requests let in from the "
                                            "replica's last copy of the endpoints and keys (the store away)",
                                            registry=r)
        self.endpoint_stats = EndpointStats()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: prometheus_client checks and locks at every ``labels`` call, which
        costs more than the observation itself (the series of a metric are few: routes x endpoints x statuses)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observer(self, model: str) -> ModelObserver:
        return ModelObserver(self, model)

    def render(self, named: bool) -> bytes:
        """The text exposition; ``named`` False: every series summed over its endpoint and model labels."""
        return generate_latest(self.registry if named else _Unnamed(self.registry))


class _Unnamed:
    """A view of a registry with the ``endpoint`` and ``model`` labels summed away (a histogram's buckets and a
    counter sum to the same kind of series; the ``_created`` timestamps, which do not sum, are left out)."""

    HIDDEN = frozenset({"endpoint", "model"})

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            sums: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in self.HIDDEN))
                sums[(sample.name, labels)] = sums.get((sample.name, labels), 0.0) + sample.value
            merged = Metric(family.name, family.documentation, family.type, family.unit)
            for (name, labels), value in sums.items():
                merged.add_sample(name, dict(labels), value)
            yield merged


class ModelObserver:
    """The batcher's view of the metrics, labelled with one model."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._m = metrics
        self._model = model
        self._batch_items = metrics.batch_items.labels(model)
        self._batch_tokens = metrics.batch_tokens.labels(model)
        self._compute_seconds = metrics.compute_seconds.labels(model)
        self._queue_seconds = metrics.queue_seconds.labels(model)
        self._queue_depth = metrics.queue_depth.labels(model)

    def batch_done(self, items: int, tokens: int, compute_s: float) -> None:
        self._batch_items.observe(items)
        self._batch_tokens.observe(tokens)
        self._compute_seconds.observe(compute_s)

    def queue_wait(self, seconds: float) -> None:
        self._queue_seconds.observe(seconds)

    def queue_depth(self, depth: int) -> None:
        self._queue_depth.set(depth)


@dataclass(frozen=True)
class EndpointSummary:
    """Requests answered by one endpoint since the server started, and their latency."""

    count: int = 0
    errors: int = 0
    mean_ms: float | None = None
    p50_ms: float | None = None


class EndpointStats:
    """Per-endpoint request counts and latencies (the last 1,000 requests) for the web UI."""

    def __init__(self, window: int = 1000) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}
        self._total_s: dict[str, float] = {}
        self._recent: dict[str, deque[float]] = {}
        self._window = window

    def record(self, endpoint_id: str, status: int, seconds: float) -> None:
        with self._lock:
            counts = self._counts.setdefault(endpoint_id, [0, 0])
            counts[0] += 1
            counts[1] += status >= 400
            self._total_s[endpoint_id] = self._total_s.get(endpoint_id, 0.0) + seconds
            self._recent.setdefault(endpoint_id, deque(maxlen=self._window)).append(seconds)

    def get(self, endpoint_id: str) -> EndpointSummary:
        with self._lock:
            if endpoint_id not in self._counts:
                return EndpointSummary()
            count, errors = self._counts[endpoint_id]
            recent = sorted(self._recent[endpoint_id])
            return EndpointSummary(count=count, errors=errors,
                                   mean_ms=round(1000 * self._total_s[endpoint_id] / count, 2),
                                   p50_ms=round(1000 * recent[len(recent) // 2], 2))
