"""SambaStudio's three embedding request shapes on one endpoint (what LangChain's SambaStudioEmbeddings and
the platform's curl examples send). Each route is the flow: authorize -> parse -> embed -> render."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from e5studio.errors import InputError
from e5studio.http_body import client_left, float64_rows, parse, read_json, vectors_answer
from e5studio.serving.edge import call_record
from e5studio.serving.inference import EndpointRef, Service, request_keys
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
from e5studio.serving.urls import GENERIC_PATH, GENERIC_V2_PATH, NLP_PATH
from e5studio.vocabulary import INPUT_TYPES, one_of

router = APIRouter()


def _input_type(params: Any) -> str | None:
    """``params.input_type`` (plain, or SambaStudio's typed ``{"type": "str", "value": ...}``): the E5 prefix
    by role for this request (None: the endpoint's default)."""
    extra = params.model_extra if params is not None else None
    value = (extra or {}).get("input_type")
    if isinstance(value, dict):
        value = value.get("value")
    if value is not None and value not in INPUT_TYPES:
        raise InputError(f"'params.input_type' must be {one_of(INPUT_TYPES)}, got {value!r}")
    return value


@router.post(NLP_PATH, response_model=None, openapi_extra=body(NlpRequest),
             responses=errors(*INFERENCE_ERRORS, ok=NlpResponse))
async def predict_nlp(request: Request, service: Service, project: str, endpoint: str) -> Response:
    note = call_record(request)
    found = await service.authorize(EndpointRef(endpoint, project), request_keys(request), note)
    shape = parse(await read_json(request, service.max_body_bytes), NlpRequest)
    embedded = await service.embed(found, shape.inputs, client_left=partial(client_left, request), note=note,
                                   input_type=_input_type(shape.params))
    return vectors_answer({"data": float64_rows(embedded.rows)})


@router.post(GENERIC_PATH, response_model=None, openapi_extra=body(GenericRequest),
             responses=errors(*INFERENCE_ERRORS, ok=GenericResponse))
async def predict_generic(request: Request, service: Service, project: str, endpoint: str) -> Response:
    note = call_record(request)
    found = await service.authorize(EndpointRef(endpoint, project), request_keys(request), note)
    shape = parse(await read_json(request, service.max_body_bytes), GenericRequest)
    embedded = await service.embed(found, shape.instances, client_left=partial(client_left, request), note=note,
                                   input_type=_input_type(shape.params))
    return vectors_answer({"predictions": float64_rows(embedded.rows)})


@router.post(GENERIC_V2_PATH, response_model=None, openapi_extra=body(V2Request),
             responses=errors(*INFERENCE_ERRORS, ok=V2Response))
async def predict_generic_v2(request: Request, service: Service, project: str, endpoint: str) -> Response:
    note = call_record(request)
    found = await service.authorize(EndpointRef(endpoint, project), request_keys(request), note)
    shape = parse(await read_json(request, service.max_body_bytes), V2Request)
    items = shape.items
    embedded = await service.embed(found, [item.value for item in items], client_left=partial(client_left, request),
                                   note=note, input_type=_input_type(shape.params))
    ids = [str(i) if item.id is None else item.id for i, item in enumerate(items)]  # no id: the item's index
    rows = float64_rows(embedded.rows)
    return vectors_answer({"items": [{"id": i, "value": row} for i, row in zip(ids, rows, strict=True)]})
