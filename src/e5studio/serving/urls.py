"""Where an endpoint answers: the route paths of every API shape (the routes are declared with these), an
endpoint's full URLs, and the curl line printed with a new key."""

from __future__ import annotations

import json
import shlex

from e5studio.control.store import Endpoint

NLP_PATH = "/api/predict/nlp/{project}/{endpoint}"
GENERIC_PATH = "/api/predict/generic/{project}/{endpoint}"
GENERIC_V2_PATH = "/api/v2/predict/generic/{project}/{endpoint}"
OPENAI_BASE = "/v1"
OPENAI_EMBEDDINGS_PATH = OPENAI_BASE + "/embeddings"
OPENAI_MODELS_PATH = OPENAI_BASE + "/models"
KB_SEARCH_PATH = "/api/kb/{project}/{kb}/search"  # a knowledge base's search (serving/routes/kb.py)
# the routes that take an endpoint key
INFERENCE_PATHS = {NLP_PATH, GENERIC_PATH, GENERIC_V2_PATH, OPENAI_EMBEDDINGS_PATH, OPENAI_MODELS_PATH, KB_SEARCH_PATH}
# the requests counted as inference in the metrics: these path prefixes (of the paths above)
INFERENCE_PREFIXES = ("/api/predict/", "/api/v2/predict/", OPENAI_EMBEDDINGS_PATH)


def endpoint_urls(base_url: str, endpoint: Endpoint) -> dict[str, str]:
    """The endpoint's URLs by API shape (by ids, which survive renames)."""
    ids = {"project": endpoint.project_id, "endpoint": endpoint.id}
    return {"nlp": base_url + NLP_PATH.format(**ids), "generic": base_url + GENERIC_PATH.format(**ids),
            "generic_v2": base_url + GENERIC_V2_PATH.format(**ids), "openai_base": base_url + OPENAI_BASE}


def curl_line(url: str, key: str) -> str:
    """A curl command that embeds one query through the SambaStudio NLP shape at ``url`` with ``key``."""
    data = json.dumps({"inputs": ["query: how much protein should a female eat"]})
    return (f"curl -X POST -H 'Content-Type: application/json' -H {shlex.quote('key: ' + key)} "
            f"--data {shlex.quote(data)} {url}")
