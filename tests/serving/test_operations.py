"""Liveness, readiness and Prometheus metrics of the real server."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from e5studio.serving.models import model_key
from tests.serving.server import MINILM, Banner, ServerProcess

Embed = Callable[..., np.ndarray]
NLP_ROUTE = "/api/predict/nlp/{project}/{endpoint}"
MODEL = model_key(MINILM)  # models are labelled by their canonical name (alias resolved)


def _admin(banner: Banner) -> dict[str, str]:
    return {"Authorization": f"Bearer {banner.admin_token}"}


def _samples(http: httpx.Client, headers: dict[str, str] | None = None) -> list[Sample]:
    answer = http.get("/metrics", headers=headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return [s for family in text_string_to_metric_families(answer.text) for s in family.samples]


def test_health(http: httpx.Client) -> None:
    answer = http.get("/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


def test_ready_after_load(http: httpx.Client, banner: Banner) -> None:
    answer = http.get("/ready", headers=_admin(banner))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ready"] is True and body["deploying"] == []
    assert body["endpoints"][MINILM] == "Live" and body["counts"]["Live"] >= 1


def test_ready_and_metrics_name_no_endpoint_without_the_admin_token(http: httpx.Client, banner: Banner,
                                                                    nlp_path: str) -> None:
    """Issue 26, point 5: anyone may probe readiness and scrape metrics, but only as counts."""
    assert http.post(nlp_path, json={"inputs": ["query: a"]}, headers={"key": banner.key}).status_code == 200
    for headers in ({}, {"Authorization": "Bearer e5sadm_wrong"}):
        ready = http.get("/ready", headers=headers)
        assert ready.status_code == 200, ready.text
        assert set(ready.json()) == {"ready", "replica", "counts"} and ready.json()["counts"]["Live"] >= 1
        text = http.get("/metrics", headers=headers).text
        assert MINILM not in text and "endpoint=" not in text and "model=" not in text, text
    anonymous = {s.name: s.value for s in _samples(http) if not s.labels.get("route") and "bucket" not in s.name}
    named = _samples(http, _admin(banner))
    compute = sum(s.value for s in named if s.name == "e5studio_compute_seconds_count")
    assert compute >= 1 and anonymous["e5studio_compute_seconds_count"] == compute  # summed over the models


def test_metrics_count_requests_batches_and_latencies(http: httpx.Client, nlp_path: str, banner: Banner,
                                                     server: ServerProcess) -> None:
    assert http.post(nlp_path, json={"inputs": ["query: a", "query: b"]}, headers={"key": banner.key}).status_code \
        == 200
    assert http.post(nlp_path, json={"inputs": ["query: a"]}, headers={"key": "e5s_wrong"}).status_code == 401
    _, other_key = server.create_endpoint("metrics", "other")  # a valid key, of another endpoint: 403
    assert http.post(nlp_path, json={"inputs": ["query: a"]}, headers={"key": other_key}).status_code == 403
    samples = _samples(http, _admin(banner))

    def value(name: str, **labels: str) -> float:
        found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert found, (name, labels, sorted({s.name for s in samples}))
        return sum(found)

    assert value("e5studio_requests_total", route=NLP_ROUTE, endpoint=MINILM, status="200") >= 1
    assert value("e5studio_requests_total", route=NLP_ROUTE, endpoint=MINILM, status="403") >= 1
    assert value("e5studio_request_failures_total", route=NLP_ROUTE, endpoint=MINILM,
                 reason="permission_error") >= 1
    assert value("e5studio_requests_total", route=NLP_ROUTE, endpoint=MINILM, status="401") >= 1
    assert value("e5studio_request_failures_total", route=NLP_ROUTE, endpoint=MINILM,
                 reason="authentication_error") >= 1
    assert value("e5studio_batch_items_count", model=MODEL) >= 1
    assert value("e5studio_batch_items_sum", model=MODEL) >= 2
    assert value("e5studio_batch_tokens_sum", model=MODEL) >= 2 * 4
    assert value("e5studio_queue_seconds_count", model=MODEL) >= 1
    assert value("e5studio_compute_seconds_count", model=MODEL) >= 1
    assert value("e5studio_compute_seconds_sum", model=MODEL) > 0
    assert value("e5studio_queue_depth", model=MODEL) >= 0
    assert value("e5studio_request_seconds_count", route=NLP_ROUTE) >= 2


def test_metrics_labels_carry_no_keys(http: httpx.Client, banner: Banner) -> None:
    text = http.get("/metrics", headers=_admin(banner)).text
    assert banner.key not in text and banner.admin_token not in text
