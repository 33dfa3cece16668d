"""SambaStudio's three embedding request shapes on one endpoint (what LangChain's SambaStudioEmbeddings and
the platform's curl examples send). Each route is the flow: authorize -> parse -> embed -> render."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request
from starlette.responses import Response

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

router = APIRouter()


@router.post(NLP_PATH, response_model=None, openapi_extra=body(NlpRequest),
             responses=errors(*INFERENCE_ERRORS, ok=NlpResponse))
async def predict_nlp(request: Request, service: Service, project: str, endpoint: str) -> Response:
    note = call_record(request)
    found = await service.authorize(EndpointRef(endpoint, project), request_keys(request), note)
    texts = parse(await read_json(request, service.max_body_bytes), NlpRequest).inputs
    embedded = await service.embed(found, texts, client_left=partial(client_left, request), note=note)
    return vectors_answer({"data": float64_rows(embedded.rows)})


@router.post(GENERIC_PATH, response_model=None, openapi_extra=body(GenericRequest),
             responses=errors(*INFERENCE_ERRORS, ok=GenericResponse))
async def predict_generic(request: Request, service: Service, project: str, endpoint: str) -> Response:
    note = call_record(request)
    found = await service.authorize(EndpointRef(endpoint, project), request_keys(request), note)
    texts = parse(await read_json(request, service.max_body_bytes), GenericRequest).instances
    embedded = await service.embed(found, texts, client_left=partial(client_left, request), note=note)
    return vectors_answer({"predictions": float64_rows(embedded.rows)})


@router.post(GENERIC_V2_PATH, response_model=None, openapi_extra=body(V2Request),
             responses=errors(*INFERENCE_ERRORS, ok=V2Response))
async def predict_generic_v2(request: Request, service: Service, project: str, endpoint: str) -> Response:
    note = call_record(request)
    found = await service.authorize(EndpointRef(endpoint, project), request_keys(request), note)
    items = parse(await read_json(request, service.max_body_bytes), V2Request).items
    embedded = await service.embed(found, [item.value for item in items], client_left=partial(client_left, request),
                                   note=note)
    ids = [str(i) if item.id is None else item.id for i, item in enumerate(items)]  # no id: the item's index
    rows = float64_rows(embedded.rows)
    return vectors_answer({"items": [{"id": i, "value": row} for i, row in zip(ids, rows, strict=True)]})
