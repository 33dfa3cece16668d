"""SambaStudio's three embedding request shapes on one endpoint (what LangChain's SambaStudioEmbeddings and
the platform's curl examples send): each turns its body into a list of texts and the rows into its answer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from e5studio.errors import InputError
from e5studio.serving.answers import float64_rows, vectors_answer
from e5studio.serving.inference import EndpointRef, TextReader, read_json, string_list
from e5studio.serving.schemas import (
    INFERENCE_ERRORS,
    GenericRequest,
    GenericResponse,
    NlpRequest,
    NlpResponse,
    V2Request,
    V2Response,
    body,
    errors,
)
from e5studio.serving.state import State
from e5studio.serving.urls import GENERIC_PATH, GENERIC_V2_PATH, NLP_PATH

router = APIRouter()


async def _body(request: Request, state: State) -> dict[str, Any]:
    """The JSON body; ``params`` (typed ``{"name": {"type", "value"}}`` or plain) is accepted, embeddings have
    none to apply."""
    body = await read_json(request, state.settings.max_body_bytes)
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise InputError("'params' must be a JSON object")
    return body


def _list_of(field: str, request: Request, state: State) -> TextReader:
    """The texts of a body that sends them as a list of strings under ``field``."""

    async def read() -> list[str]:
        body = await _body(request, state)
        if field not in body:
            raise InputError(f"request body needs '{field}': a list of strings")
        return string_list(body[field], field)

    return read


@router.post(NLP_PATH, response_model=None, openapi_extra=body(NlpRequest),
             responses=errors(*INFERENCE_ERRORS, ok=NlpResponse))
async def predict_nlp(request: Request, state: State, project: str, endpoint: str) -> Response:
    result = await state.inference.embed(request, EndpointRef(endpoint, project), _list_of("inputs", request, state))
    return vectors_answer({"data": float64_rows(result.rows)})


@router.post(GENERIC_PATH, response_model=None, openapi_extra=body(GenericRequest),
             responses=errors(*INFERENCE_ERRORS, ok=GenericResponse))
async def predict_generic(request: Request, state: State, project: str, endpoint: str) -> Response:
    result = await state.inference.embed(request, EndpointRef(endpoint, project),
                                         _list_of("instances", request, state))
    return vectors_answer({"predictions": float64_rows(result.rows)})


@router.post(GENERIC_V2_PATH, response_model=None, openapi_extra=body(V2Request),
             responses=errors(*INFERENCE_ERRORS, ok=V2Response))
async def predict_generic_v2(request: Request, state: State, project: str, endpoint: str) -> Response:
    ids: list[Any] = []

    async def texts() -> list[str]:
        body = await _body(request, state)
        items = body.get("items")
        if not isinstance(items, list) or not items:
            raise InputError("'items' must be a non-empty list of {\"id\": str, \"value\": str} objects")
        values: list[str] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("value"), str):
                raise InputError(f"'items[{i}]' must be an object with a string 'value'")
            item_id = item.get("id", str(i))
            if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
                raise InputError(f"'items[{i}].id' must be a string or an integer (it is echoed back unchanged)")
            ids.append(item_id)
            values.append(item["value"])
        return values

    result = await state.inference.embed(request, EndpointRef(endpoint, project), texts)
    rows = float64_rows(result.rows)
    return vectors_answer({"items": [{"id": i, "value": row} for i, row in zip(ids, rows, strict=True)]})
