"""The admin REST API (``/api/admin/...``, ``Authorization: Bearer <admin token>``) used by the CLI and web UI."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request

from e5studio.control.store import Endpoint, Store
from e5studio.errors import AuthError, ForbiddenError, InputError
from e5studio.serving.inference import read_json, request_key


def require_admin(request: Request) -> None:
    token = request_key(request)
    if token is None:
        raise AuthError("missing admin token: send 'Authorization: Bearer <admin token>'")
    if not request.app.state.inference.store.check_admin_token(token):
        raise ForbiddenError("the admin token is not valid")


router = APIRouter(prefix="/api/admin", dependencies=[Depends(require_admin)])


def _store(request: Request) -> Store:
    return request.app.state.inference.store


def endpoint_urls(base_url: str, endpoint: Endpoint) -> dict[str, str]:
    tail = f"{endpoint.project_id}/{endpoint.id}"
    return {"nlp": f"{base_url}/api/predict/nlp/{tail}", "generic": f"{base_url}/api/predict/generic/{tail}",
            "generic_v2": f"{base_url}/api/v2/predict/generic/{tail}", "openai_base": f"{base_url}/v1"}


def curl_line(url: str, key: str) -> str:
    data = json.dumps({"inputs": ["query: how much protein should a female eat"]})
    return (f"curl -X POST -H 'Content-Type: application/json' -H {shlex.quote('key: ' + key)} "
            f"--data {shlex.quote(data)} {url}")


def endpoint_view(request: Request, endpoint: Endpoint) -> dict[str, Any]:
    return {**asdict(endpoint), "urls": endpoint_urls(request.app.state.settings.base_url, endpoint)}


def _field(body: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    value = body.get(name, default)
    if value is ...:
        raise InputError(f"'{name}' is required")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InputError(f"'{name}' must be a {kind.__name__}")
    return value


@router.get("/projects")
async def list_projects(request: Request) -> dict[str, Any]:
    return {"projects": [asdict(p) for p in _store(request).list_projects()]}


@router.post("/projects", status_code=201)
async def create_project(request: Request) -> dict[str, Any]:
    body = await read_json(request, 64 * 1024)
    project = _store(request).create_project(_field(body, "name", str), _field(body, "description", str, ""))
    return asdict(project)


@router.get("/endpoints")
async def list_endpoints(request: Request, project: str | None = None) -> dict[str, Any]:
    return {"endpoints": [endpoint_view(request, e) for e in _store(request).list_endpoints(project)]}


@router.post("/endpoints", status_code=201)
async def create_endpoint(request: Request) -> dict[str, Any]:
    body = await read_json(request, 64 * 1024)
    endpoint, key = _store(request).create_endpoint(
        _field(body, "project", str), _field(body, "name", str),
        _field(body, "model", str, request.app.state.settings.default_model),
        _field(body, "batch_size", int, 32), _field(body, "description", str, ""))
    request.app.state.pool.deploy(endpoint)
    view = endpoint_view(request, _store(request).get_endpoint_by_id(endpoint.id))
    return {"endpoint": view, "key": key, "curl": curl_line(view["urls"]["nlp"], key)}


@router.get("/projects/{project}/endpoints/{endpoint}")
async def show_endpoint(request: Request, project: str, endpoint: str) -> dict[str, Any]:
    return endpoint_view(request, _store(request).get_endpoint(project, endpoint))


@router.delete("/projects/{project}/endpoints/{endpoint}")
async def delete_endpoint(request: Request, project: str, endpoint: str) -> dict[str, Any]:
    found = _store(request).get_endpoint(project, endpoint)
    _store(request).delete_endpoint(found.id)
    return {"deleted": found.id}


@router.post("/projects/{project}/endpoints/{endpoint}/rotate-key")
async def rotate_key(request: Request, project: str, endpoint: str) -> dict[str, Any]:
    found = _store(request).get_endpoint(project, endpoint)
    key = _store(request).rotate_key(found.id)
    return {"endpoint": found.id, "key": key, "curl": curl_line(endpoint_urls(
        request.app.state.settings.base_url, found)["nlp"], key)}
