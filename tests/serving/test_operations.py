"""Liveness, readiness and Prometheus metrics of the real server."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from e5studio.serving.models import model_key
from tests.serving.server import MINILM, Banner

Embed = Callable[..., np.ndarray]
NLP_ROUTE = "/api/predict/nlp/{project}/{endpoint}"
MODEL = model_key(MINILM)  # models are labelled by their canonical name (alias resolved)


def _samples(http: httpx.Client) -> list[Sample]:
    answer = http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return [s for family in text_string_to_metric_families(answer.text) for s in family.samples]


def test_health(http: httpx.Client) -> None:
    answer = http.get("/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


def test_ready_after_load(http: httpx.Client) -> None:
    answer = http.get("/ready")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ready"] is True and body["deploying"] == []
    assert body["endpoints"][MINILM] == "Live"


def test_metrics_count_requests_batches_and_latencies(http: httpx.Client, nlp_path: str, banner: Banner) -> None:
    assert http.post(nlp_path, json={"inputs": ["query: a", "query: b"]}, headers={"key": banner.key}).status_code \
        == 200
    assert http.post(nlp_path, json={"inputs": ["query: a"]}, headers={"key": "e5s_wrong"}).status_code == 403
    samples = _samples(http)

    def value(name: str, **labels: str) -> float:
        found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert found, (name, labels, sorted({s.name for s in samples}))
        return sum(found)

    assert value("e5studio_requests_total", route=NLP_ROUTE, endpoint=MINILM, status="200") >= 1
    assert value("e5studio_requests_total", route=NLP_ROUTE, endpoint=MINILM, status="403") >= 1
    assert value("e5studio_request_failures_total", route=NLP_ROUTE, endpoint=MINILM,
                 reason="permission_error") >= 1
    assert value("e5studio_batch_items_count", model=MODEL) >= 1
    assert value("e5studio_batch_items_sum", model=MODEL) >= 2
    assert value("e5studio_batch_tokens_sum", model=MODEL) >= 2 * 4
    assert value("e5studio_queue_seconds_count", model=MODEL) >= 1
    assert value("e5studio_compute_seconds_count", model=MODEL) >= 1
    assert value("e5studio_compute_seconds_sum", model=MODEL) > 0
    assert value("e5studio_queue_depth", model=MODEL) >= 0
    assert value("e5studio_request_seconds_count", route=NLP_ROUTE) >= 2


def test_metrics_labels_carry_no_keys(http: httpx.Client, banner: Banner) -> None:
    text = http.get("/metrics").text
    assert banner.key not in text and banner.admin_token not in text
