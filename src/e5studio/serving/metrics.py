"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
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

        self.endpoint_stats = EndpointStats()

    def observer(self, model: str) -> ModelObserver:
        return ModelObserver(self, model)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelObserver:
    """The batcher's view of the metrics, labelled with one model."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._m = metrics
        self._model = model

    def batch_done(self, items: int, tokens: int, compute_s: float) -> None:
        self._m.batch_items.labels(self._model).observe(items)
        self._m.batch_tokens.labels(self._model).observe(tokens)
        self._m.compute_seconds.labels(self._model).observe(compute_s)

    def queue_wait(self, seconds: float) -> None:
        self._m.queue_seconds.labels(self._model).observe(seconds)

    def queue_depth(self, depth: int) -> None:
        self._m.queue_depth.labels(self._model).set(depth)


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
