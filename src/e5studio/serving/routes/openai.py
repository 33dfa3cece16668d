"""OpenAI-compatible ``/v1/embeddings`` and ``/v1/models``; ``model`` names the endpoint (name or id)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from e5studio.errors import InputError
from e5studio.serving.answers import float64_rows, vectors_answer
from e5studio.serving.inference import EndpointRef, read_json, request_keys, string_list
from e5studio.serving.schemas import INFERENCE_ERRORS, ModelList, OpenAIRequest, OpenAIResponse, body, errors
from e5studio.serving.state import State
from e5studio.serving.urls import OPENAI_EMBEDDINGS_PATH, OPENAI_MODELS_PATH

router = APIRouter()
ENCODINGS = ("float", "base64")


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, (int, list)) for v in value):
        raise InputError("'input' as token arrays is not supported: send strings (E5 uses its own WordPiece "
                         "tokenizer); with LangChain's OpenAIEmbeddings set check_embedding_ctx_length=False")
    return string_list(value, "input")


def _encode(row: np.ndarray, encoding_format: str) -> np.ndarray | str:
    if encoding_format == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return float64_rows(row)


@router.post(OPENAI_EMBEDDINGS_PATH, response_model=None, openapi_extra=body(OpenAIRequest),
             responses=errors(*INFERENCE_ERRORS, ok=OpenAIResponse))
async def embeddings(request: Request, state: State) -> Response:
    body = await read_json(request, state.settings.max_body_bytes)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InputError("'model' is required: the name or id of an e5studio endpoint")
    encoding_format = body.get("encoding_format") or "float"

    async def texts() -> list[str]:
        if "input" not in body:
            raise InputError("'input' is required: a string or a list of strings")
        found = _texts(body["input"])
        if encoding_format not in ENCODINGS:
            raise InputError(f"'encoding_format' must be 'float' or 'base64', got {encoding_format!r}")
        return found

    result = await state.inference.embed(request, EndpointRef(model), texts, dimensions=body.get("dimensions"))
    return vectors_answer({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _encode(row, encoding_format)}
                 for i, row in enumerate(result.rows)],
        "model": result.endpoint.name,
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
    })


@router.get(OPENAI_MODELS_PATH, response_model=None, responses=errors(401, 403, 405, 500, ok=ModelList))
async def models(request: Request, state: State) -> dict[str, Any]:
    """The endpoints this key opens (the admin token lists all)."""
    return {"object": "list", "data": [
        {"id": e.name, "object": "model", "owned_by": e.project_name, "precision": e.precision,
         "created": int(datetime.fromisoformat(e.created_at).timestamp())}
        for e in state.inference.endpoints_for_key(request_keys(request))]}
