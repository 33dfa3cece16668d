"""32 clients at once, each with its own single query, get exactly their own vectors (no mix-ups)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np

from tests.serving.server import Banner, ServerProcess, assert_vectors

Embed = Callable[..., np.ndarray]
CLIENTS = 32
TOPICS = ["protein", "the Eiffel tower", "sleep and memory", "vitamin D", "black holes", "tax law", "jazz piano",
          "coral reefs"]


def _text(i: int) -> str:
    """A different query per client, with different lengths so the packed batch mixes sequence sizes."""
    return f"query: question {i} about {TOPICS[i % len(TOPICS)]}" + " and more detail" * (i % 5)


def test_32_concurrent_clients_get_their_own_vectors(server: ServerProcess, banner: Banner, nlp_path: str,
                                                     embed: Embed) -> None:
    texts = [_text(i) for i in range(CLIENTS)]
    start = threading.Barrier(CLIENTS)

    def one(i: int) -> Any:
        with httpx.Client(base_url=server.base_url, timeout=120, trust_env=False) as client:
            client.get("/health")  # connect before the barrier so that the requests really arrive together
            start.wait(timeout=60)
            answer = client.post(nlp_path, json={"inputs": [texts[i]]}, headers={"key": banner.key})
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]

    with ThreadPoolExecutor(CLIENTS) as pool:
        rows = list(pool.map(one, range(CLIENTS)))
    for i, row in enumerate(rows):
        assert_vectors(row, embed([texts[i]]))
    got = np.asarray([r[0] for r in rows])
    # no two clients got the same row (each text is different, so a mix-up would show as a near-duplicate)
    similarity = got @ got.T - np.eye(CLIENTS) * 2
    assert similarity.max() < 0.9999


def test_concurrent_mixed_routes_and_sizes(server: ServerProcess, banner: Banner, embed: Embed) -> None:
    """Requests of several sizes on every route at once: each gets its own rows, in its own order."""
    tail = f"{banner.project_id}/{banner.endpoint_id}"
    jobs = [(i, [_text(i * 7 + j) for j in range(i % 4 + 1)]) for i in range(16)]
    start = threading.Barrier(len(jobs))

    def one(job: tuple[int, list[str]]) -> Any:
        i, texts = job
        with httpx.Client(base_url=server.base_url, timeout=120, trust_env=False) as client:
            client.get("/health")
            start.wait(timeout=60)
            route = i % 4
            if route == 0:
                body = client.post(f"/api/predict/nlp/{tail}", json={"inputs": texts},
                                   headers={"key": banner.key}).json()
                return body["data"]
            if route == 1:
                body = client.post(f"/api/predict/generic/{tail}", json={"instances": texts},
                                   headers={"key": banner.key}).json()
                return body["predictions"]
            if route == 2:
                body = client.post(f"/api/v2/predict/generic/{tail}",
                                   json={"items": [{"value": t} for t in texts]}, headers={"key": banner.key}).json()
                return [item["value"] for item in body["items"]]
            body = client.post("/v1/embeddings", json={"model": banner.endpoint_id, "input": texts},
                               headers={"Authorization": f"Bearer {banner.key}"}).json()
            return [d["embedding"] for d in body["data"]]

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(one, jobs))
    for (_, texts), rows in zip(jobs, results, strict=True):
        assert_vectors(rows, embed(texts))
