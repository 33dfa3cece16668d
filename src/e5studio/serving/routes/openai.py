"""OpenAI-compatible ``/v1/embeddings`` and ``/v1/models``; ``model`` names the endpoint (name or id)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from e5studio.errors import AuthError, InputError
from e5studio.serving.inference import InferenceService, read_json, request_key, string_list

router = APIRouter()


def _service(request: Request) -> InferenceService:
    return request.app.state.inference


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, (int, list)) for v in value):
        raise InputError("'input' as token arrays is not supported: send strings (E5 uses its own WordPiece "
                         "tokenizer); with LangChain's OpenAIEmbeddings set check_embedding_ctx_length=False")
    return string_list(value, "input")


def _encode(row: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return row.tolist()


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> dict[str, Any]:
    service = _service(request)
    body = await read_json(request, service.max_body_bytes)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InputError("'model' is required: the name or id of an e5studio endpoint")
    endpoint = service.store.find_endpoint(model)
    request.state.endpoint = endpoint.name
    request.state.endpoint_id = endpoint.id
    service.authorize(endpoint, request)
    if "input" not in body:
        raise InputError("'input' is required: a string or a list of strings")
    texts = _texts(body["input"])
    encoding_format = body.get("encoding_format") or "float"
    if encoding_format not in ("float", "base64"):
        raise InputError(f"'encoding_format' must be 'float' or 'base64', got {encoding_format!r}")
    result = await service.embed(request, endpoint, texts, dimensions=body.get("dimensions"))
    request.state.inputs = len(texts)
    request.state.tokens = result.tokens
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _encode(row, encoding_format)}
                 for i, row in enumerate(result.rows)],
        "model": endpoint.name,
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
    }


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    """The endpoints this key opens (the admin token lists all)."""
    service = _service(request)
    key = request_key(request)
    if key is None:
        raise AuthError("missing key: send 'Authorization: Bearer <endpoint key>'")
    endpoints = service.store.list_endpoints()
    if not service.store.check_admin_token(key):
        endpoints = [e for e in endpoints if service.store.check_endpoint_key(e.id, key)]
        if not endpoints:
            raise AuthError("the key is not valid for any endpoint")
    return {"object": "list", "data": [
        {"id": e.name, "object": "model", "owned_by": e.project_name,
         "created": int(datetime.fromisoformat(e.created_at).timestamp())}
        for e in endpoints]}
