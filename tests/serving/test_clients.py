"""Real client libraries against the real server: LangChain's SambaStudioEmbeddings (all three URI shapes),
the official openai client, curl in the platform docs' shape and the curl line the server printed.
Every vector is compared with ``Embedder.embed`` in-process (<= 1e-5)."""

from __future__ import annotations

import json
import shlex
import subprocess
import warnings
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from e5studio.engine.embedder import Embedder
from tests.serving.server import MINILM, Banner, ServerProcess, assert_vectors, cli_env

with warnings.catch_warnings():  # langchain-community announces its sunset on import
    warnings.simplefilter("ignore", DeprecationWarning)
    from langchain_community.embeddings import SambaStudioEmbeddings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SambaStudioEmbeddings is deprecated

URIS = ["api/predict/nlp", "api/predict/generic", "api/v2/predict/generic"]
# 40 passages of different lengths: more than the endpoint's batch size of 32, so LangChain sends two batches
DOCUMENTS = [f"passage: document {i} " + " ".join(["protein intake", "and muscle", "in adults"][: i % 3 + 1])
             * (i % 7 + 1) for i in range(40)]
QUERY = "query: how much protein should a female eat"
DOCS_CURL = ("curl -X POST -H 'Content-Type: application/json' -H 'key: {key}' "
             "--data '{{\"inputs\": [\"{text}\"]}}' {url}")

Embed = Callable[..., np.ndarray]


def _langchain(server: ServerProcess, uri: str, project: str, endpoint: str, key: str,
               **extra: Any) -> SambaStudioEmbeddings:
    return SambaStudioEmbeddings(sambastudio_embeddings_base_url=server.base_url,
                                 sambastudio_embeddings_base_uri=uri,
                                 sambastudio_embeddings_project_id=project,
                                 sambastudio_embeddings_endpoint_id=endpoint,
                                 sambastudio_embeddings_api_key=key, **extra)


# -- LangChain ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", URIS)
def test_langchain_embed_documents_in_batches(server: ServerProcess, banner: Banner, embed: Embed, uri: str) -> None:
    client = _langchain(server, uri, banner.project_id, banner.endpoint_id, banner.key)
    vectors = client.embed_documents(DOCUMENTS)
    assert len(vectors) == len(DOCUMENTS) > 32
    assert_vectors(vectors, embed(DOCUMENTS))


@pytest.mark.parametrize("uri", URIS)
def test_langchain_embed_query(server: ServerProcess, banner: Banner, embed: Embed, uri: str) -> None:
    client = _langchain(server, uri, banner.project_id, banner.endpoint_id, banner.key)
    assert_vectors(client.embed_query(QUERY), embed([QUERY])[0])


@pytest.mark.parametrize("uri", URIS)
def test_langchain_with_typed_params(server: ServerProcess, banner: Banner, embed: Embed, uri: str) -> None:
    """model_kwargs become SambaStudio's typed params (v1) or plain params (v2); accepted and ignored."""
    client = _langchain(server, uri, banner.project_id, banner.endpoint_id, banner.key,
                        model_kwargs={"select_expert": "e5-large-v2", "max_tokens_to_generate": 1})
    assert_vectors(client.embed_documents(DOCUMENTS[:3]), embed(DOCUMENTS[:3]))


def test_langchain_by_project_and_endpoint_names(server: ServerProcess, banner: Banner, embed: Embed) -> None:
    client = _langchain(server, "api/predict/nlp", "default", MINILM, banner.key)
    assert_vectors(client.embed_query(QUERY), embed([QUERY])[0])


def test_langchain_batch_over_the_endpoint_size_shows_the_platform_message(server: ServerProcess,
                                                                           banner: Banner) -> None:
    client = _langchain(server, "api/predict/nlp", banner.project_id, banner.endpoint_id, banner.key,
                        batch_size=33)
    with pytest.raises(RuntimeError) as info:
        client.embed_documents(DOCUMENTS)
    assert "status code 400" in str(info.value)
    assert "Expected a Tensor with batch size <= 32, got batch size: 33" in str(info.value)


def test_v2_items_keep_their_ids_and_default_to_the_index(http: httpx.Client, banner: Banner, embed: Embed) -> None:
    path = f"/api/v2/predict/generic/{banner.project_id}/{banner.endpoint_id}"
    answer = http.post(path, headers={"key": banner.key},
                       json={"items": [{"id": "a", "value": QUERY}, {"value": DOCUMENTS[0]}]})
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    assert [item["id"] for item in items] == ["a", "1"]
    assert_vectors([item["value"] for item in items], embed([QUERY, DOCUMENTS[0]]))


# -- openai ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oai(server: ServerProcess, banner: Banner) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=banner.key, max_retries=0, timeout=120)


def test_openai_default_base64_encoding(oai: openai.OpenAI, embed: Embed, minilm_embedder: Embedder) -> None:
    texts = [QUERY, *DOCUMENTS[:5]]
    result = oai.embeddings.create(model=MINILM, input=texts)
    assert [d.index for d in result.data] == list(range(len(texts)))
    assert all(isinstance(d.embedding, list) and len(d.embedding) == 384 for d in result.data)
    assert_vectors([d.embedding for d in result.data], embed(texts))
    tokens = sum(minilm_embedder.tokenizer.count_tokens(texts))
    assert result.usage.prompt_tokens == tokens
    assert result.usage.total_tokens == tokens
    assert result.model == MINILM


def test_openai_float_encoding(oai: openai.OpenAI, embed: Embed, minilm_embedder: Embedder) -> None:
    texts = DOCUMENTS[:32]
    result = oai.embeddings.create(model=MINILM, input=texts, encoding_format="float")
    assert_vectors([d.embedding for d in result.data], embed(texts))
    assert result.usage.prompt_tokens == sum(minilm_embedder.tokenizer.count_tokens(texts))


def test_openai_single_string_and_endpoint_id(oai: openai.OpenAI, banner: Banner, embed: Embed) -> None:
    result = oai.embeddings.create(model=banner.endpoint_id, input=QUERY, dimensions=384)
    assert len(result.data) == 1
    assert_vectors(result.data[0].embedding, embed([QUERY])[0])


def test_openai_base64_bytes_are_little_endian_float32(http: httpx.Client, banner: Banner, embed: Embed) -> None:
    import base64

    answer = http.post("/v1/embeddings", headers={"Authorization": f"Bearer {banner.key}"},
                       json={"model": MINILM, "input": [QUERY], "encoding_format": "base64"})
    assert answer.status_code == 200, answer.text
    raw = base64.b64decode(answer.json()["data"][0]["embedding"])
    assert_vectors(np.frombuffer(raw, dtype="<f4"), embed([QUERY])[0])


def test_openai_models_lists_the_endpoint(oai: openai.OpenAI) -> None:
    models = [m.id for m in oai.models.list()]
    assert MINILM in models


def test_openai_client_errors_are_typed(oai: openai.OpenAI, server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        oai.embeddings.create(model=MINILM, input=DOCUMENTS[:33])
    assert "Expected a Tensor with batch size <= 32, got batch size: 33" in str(bad.value)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        oai.embeddings.create(model=MINILM, input=QUERY, dimensions=128)
    with pytest.raises(openai.NotFoundError, match="no-such-endpoint"):
        oai.embeddings.create(model="no-such-endpoint", input=QUERY)
    wrong = oai.with_options(api_key="e5s_" + "x" * 43)
    with pytest.raises(openai.AuthenticationError, match="the key is not valid"):
        wrong.embeddings.create(model=MINILM, input=QUERY)


# -- curl --------------------------------------------------------------------------------------------


def _curl(argv: list[str]) -> Any:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=cli_env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_curl_in_the_platform_docs_shape(banner: Banner, embed: Embed) -> None:
    text = "query: what is the capital of France"
    command = DOCS_CURL.format(key=banner.key, text=text, url=banner.url)
    body = _curl(shlex.split(command))
    assert list(body) == ["data"]
    assert_vectors(body["data"], embed([text]))


def test_the_printed_curl_line_runs_as_printed(banner: Banner, embed: Embed) -> None:
    assert banner.curl.startswith("curl -X POST -H 'Content-Type: application/json' -H 'key: ")
    assert banner.url in banner.curl
    body = _curl(["bash", "-c", banner.curl])
    assert_vectors(body["data"], embed([QUERY]))
