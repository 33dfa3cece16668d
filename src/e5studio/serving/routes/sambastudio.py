"""SambaStudio's three embedding request shapes on one endpoint (what LangChain's SambaStudioEmbeddings and
the platform's curl examples send)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from e5studio.errors import InputError
from e5studio.serving.inference import InferenceService, read_json, string_list

router = APIRouter()


def _service(request: Request) -> InferenceService:
    return request.app.state.inference


def _check_params(body: dict[str, Any]) -> None:
    """``params`` (typed ``{"name": {"type", "value"}}`` or plain) is accepted; embeddings have none to apply."""
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise InputError("'params' must be a JSON object")


async def _embed(request: Request, project: str, endpoint_ref: str, texts_of: str) -> tuple[list[Any], Any]:
    service = _service(request)
    endpoint = service.store.get_endpoint(project, endpoint_ref)
    request.state.endpoint = endpoint.name
    request.state.endpoint_id = endpoint.id
    service.authorize(endpoint, request)
    body = await read_json(request, service.max_body_bytes)
    _check_params(body)
    if texts_of == "items":
        items = body.get("items")
        if not isinstance(items, list) or not items:
            raise InputError("'items' must be a non-empty list of {\"id\": str, \"value\": str} objects")
        ids: list[Any] = []
        texts: list[str] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("value"), str):
                raise InputError(f"'items[{i}]' must be an object with a string 'value'")
            ids.append(item.get("id", str(i)))
            texts.append(item["value"])
    else:
        if texts_of not in body:
            raise InputError(f"request body needs '{texts_of}': a list of strings")
        texts = string_list(body[texts_of], texts_of)
        ids = []
    result = await service.embed(request, endpoint, texts)
    request.state.inputs = len(texts)
    request.state.tokens = result.tokens
    return ids, result.rows


@router.post("/api/predict/nlp/{project}/{endpoint}")
async def predict_nlp(request: Request, project: str, endpoint: str) -> dict[str, Any]:
    _, rows = await _embed(request, project, endpoint, "inputs")
    return {"data": rows.tolist()}


@router.post("/api/predict/generic/{project}/{endpoint}")
async def predict_generic(request: Request, project: str, endpoint: str) -> dict[str, Any]:
    _, rows = await _embed(request, project, endpoint, "instances")
    return {"predictions": rows.tolist()}


@router.post("/api/v2/predict/generic/{project}/{endpoint}")
async def predict_generic_v2(request: Request, project: str, endpoint: str) -> dict[str, Any]:
    ids, rows = await _embed(request, project, endpoint, "items")
    return {"items": [{"id": i, "value": row} for i, row in zip(ids, rows.tolist(), strict=True)]}
