"""Role-aware prefixes on the inference routes (issue 23, point 6): an endpoint's default ``input_type``
(stored at creation; ``none`` stays the default), overridden per request by ``input_type`` in the OpenAI body
and ``params.input_type`` in SambaStudio's; a text that already has the prefix is not prefixed twice. The
answers equal the engine's own embedding of the prefixed texts."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from e5studio.engine.embedder import Embedder
from e5studio.settings import EngineSettings
from tests.serving.server import ServerProcess


@pytest.fixture(scope="module")
def server(served: tuple[ServerProcess, object, str]) -> ServerProcess:
    """The knowledge-base tests' server (tests/kb/test_http.py), one server start fewer."""
    return served[0]


def test_endpoint_default_and_per_request_input_type(server: ServerProcess, tiny_dir: Path) -> None:
    engine = Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", threads=1))
    created = server.admin("POST", "/api/admin/endpoints", {"project": "default", "name": "queries",
                                                            "model": str(tiny_dir), "input_type": "query"})
    assert created.status_code == 201, created.text
    assert created.json()["endpoint"]["input_type"] == "query"
    key = created.json()["key"]
    plain_key = server.banner().key
    server.wait_status("default", "queries")
    ids = created.json()["endpoint"]
    nlp = f"/api/predict/nlp/{ids['project_id']}/{ids['id']}"
    texts = ["how do statins work", "query: already prefixed"]
    with httpx.Client(base_url=server.base_url, timeout=60, trust_env=False) as client:
        def rows(path: str, body: dict[str, object], with_key: str = key) -> np.ndarray:
            answer = client.post(path, json=body, headers={"key": with_key})
            assert answer.status_code == 200, answer.text
            data = answer.json()
            vectors = data.get("data") or data.get("predictions") or [i["value"] for i in data.get("items", [])]
            if vectors and isinstance(vectors[0], dict):
                vectors = [v["embedding"] for v in vectors]
            return np.asarray(vectors, dtype=np.float32)

        # the endpoint's default: query, never twice
        np.testing.assert_allclose(rows(nlp, {"inputs": texts}), engine.embed(texts, "query"), atol=1e-5)
        np.testing.assert_allclose(rows(nlp, {"inputs": texts})[1], rows(nlp, {"inputs": ["already prefixed"]})[0],
                                   atol=1e-6)
        # overridden per request: SambaStudio params (plain and typed) and OpenAI's body
        np.testing.assert_allclose(rows(nlp, {"inputs": texts, "params": {"input_type": "passage"}}),
                                   engine.embed(texts, "passage"), atol=1e-5)
        generic = nlp.replace("/nlp/", "/generic/")
        np.testing.assert_allclose(rows(generic, {"instances": texts, "params": {"input_type": {
            "type": "str", "value": "none"}}}), engine.embed(texts, None), atol=1e-5)
        openai = rows("/v1/embeddings", {"model": "queries", "input": texts, "input_type": "passage"})
        np.testing.assert_allclose(openai, engine.embed(texts, "passage"), atol=1e-5)
        # an endpoint made without one keeps today's behaviour: texts as sent
        default = server.admin("GET", "/api/admin/endpoints").json()["endpoints"]
        first = next(e for e in default if e["id"] == server.banner().endpoint_id)
        assert first["input_type"] == "none"
        np.testing.assert_allclose(rows(first["urls"]["nlp"].removeprefix(server.base_url), {"inputs": texts},
                                        plain_key), engine.embed(texts, None), atol=1e-5)
        for body, path in (({"inputs": texts, "params": {"input_type": "document"}}, nlp),
                           ({"model": "queries", "input": texts, "input_type": "document"}, "/v1/embeddings")):
            bad = client.post(path, json=body, headers={"key": key})
            assert bad.status_code == 400 and "input_type" in bad.json()["error"]["message"], bad.text
    refused = server.admin("POST", "/api/admin/endpoints", {"project": "default", "name": "x", "model": str(tiny_dir),
                                                            "input_type": "document"})
    assert refused.status_code == 400 and "input_type" in refused.text
