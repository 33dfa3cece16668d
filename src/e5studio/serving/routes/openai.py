"""OpenAI-compatible ``/v1/embeddings`` and ``/v1/models``; ``model`` names the endpoint (name or id).

The endpoint is named inside the body, so the body is read before the lookup; a request without any key is
refused before a byte of it is read, and the texts are judged only after the key check."""

from __future__ import annotations

import base64
from datetime import datetime
from functools import partial
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from e5studio.engine.cpu import cpu_features
from e5studio.errors import AuthError, InputError
from e5studio.http_body import client_left, float64_rows, parse, read_json, vectors_answer
from e5studio.serving.edge import call_record
from e5studio.serving.inference import EndpointRef, Service, request_keys, require_keys
from e5studio.serving.schemas import (
    INFERENCE_ERRORS,
    MODEL_REQUIRED,
    ModelList,
    OpenAIRequest,
    OpenAIResponse,
    body,
    errors,
)
from e5studio.serving.state import State
from e5studio.serving.throttle import client_address
from e5studio.serving.urls import OPENAI_EMBEDDINGS_PATH, OPENAI_MODELS_PATH

router = APIRouter()


def _named(body: dict[str, Any]) -> EndpointRef:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InputError(MODEL_REQUIRED)
    return EndpointRef(model)


def _encode(row: np.ndarray, encoding_format: str | None) -> np.ndarray | str:
    if encoding_format == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return float64_rows(row)


@router.post(OPENAI_EMBEDDINGS_PATH, response_model=None, openapi_extra=body(OpenAIRequest),
             responses=errors(*INFERENCE_ERRORS, ok=OpenAIResponse))
async def embeddings(request: Request, service: Service) -> Response:
    note = call_record(request)
    keys = require_keys(request_keys(request))
    raw = await read_json(request, service.max_body_bytes)
    endpoint = await service.authorize(_named(raw), keys, note)
    shape = parse(raw, OpenAIRequest)
    texts = [shape.input] if isinstance(shape.input, str) else shape.input
    embedded = await service.embed(endpoint, texts, shape.dimensions, partial(client_left, request), note,
                                   shape.input_type)
    return vectors_answer({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _encode(row, shape.encoding_format)}
                 for i, row in enumerate(embedded.rows)],
        "model": endpoint.name,
        "usage": {"prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens},
    })


@router.get(OPENAI_MODELS_PATH, response_model=None, responses=errors(401, 403, 405, 429, 500, ok=ModelList))
async def models(request: Request, service: Service, state: State) -> dict[str, Any]:
    """The endpoints this key opens (the admin token lists all). The admin token is checked here too, so a
    wrong key counts as a failed login of the client's address (the admin API's and web login's throttle)."""
    address = client_address(request.client)
    state.login_throttle.check(address)
    try:
        endpoints = service.endpoints_for_key(request_keys(request))
    except AuthError:
        state.login_throttle.failed(address)
        raise
    kernels = cpu_features().describe()
    return {"object": "list", "data": [
        {"id": e.name, "object": "model", "owned_by": e.project_name, "precision": e.precision, "kernels": kernels,
         "created": int(datetime.fromisoformat(e.created_at).timestamp())}
        for e in endpoints]}
