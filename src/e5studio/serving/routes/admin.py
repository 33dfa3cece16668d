"""The admin REST API (``/api/admin/...``, ``Authorization: Bearer <admin token>``) used by the CLI."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request

from e5studio.control.store import Endpoint
from e5studio.engine.cpu import refuse_unoffered
from e5studio.errors import AuthError, ForbiddenError, InputError
from e5studio.http_body import read_json
from e5studio.jobspec import deploy_gate
from e5studio.serving.inference import bearer_token
from e5studio.serving.schemas import ADMIN_ERRORS, EndpointCreate, ProjectCreate, body, errors
from e5studio.serving.state import ServingState, State
from e5studio.serving.throttle import client_address
from e5studio.serving.urls import curl_line, endpoint_urls

ADMIN_BODY_LIMIT = 64 * 1024


def require_admin(request: Request, state: State) -> None:
    """The admin token of ``Authorization: Bearer`` (other headers, e.g. a stray ``key:``, play no part);
    failures are throttled per client address."""
    address = client_address(request.client)
    state.login_throttle.check(address)
    token = bearer_token(request)
    if token is None:
        raise AuthError("missing admin token: send 'Authorization: Bearer <admin token>'")
    if not state.store.check_admin_token(token):
        state.login_throttle.failed(address)
        raise ForbiddenError("the admin token is not valid")


def is_admin(request: Request, state: ServingState) -> bool:
    """Whether the request carries the admin token (``Authorization: Bearer``), for routes that show more to the
    admin than to anyone; a wrong token counts as a failed login of the client's address (the same throttle)."""
    token = bearer_token(request)
    if token is None:
        return False
    address = client_address(request.client)
    state.login_throttle.check(address)
    if state.store.check_admin_token(token):
        return True
    state.login_throttle.failed(address)
    return False


router = APIRouter(prefix="/api/admin", dependencies=[Depends(require_admin)], responses=errors(*ADMIN_ERRORS))


def endpoint_view(state: ServingState, endpoint: Endpoint) -> dict[str, Any]:
    """An endpoint as the admin API shows it: its record (the deploy gate's verdict parsed), its URLs, and on how
    many of the replicas sharing the store (those with a recent heartbeat) its model is ready."""
    readiness = state.store.endpoint_readiness(endpoint.id)
    return {**asdict(endpoint), "deploy_gate": deploy_gate.summary(endpoint.deploy_gate),
            "urls": endpoint_urls(state.settings.base_url, endpoint),
            "replicas": {"ready": readiness.ready, "total": readiness.replicas, "summary": str(readiness)}}


def _field(body: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    value = body.get(name, default)
    if value is None and default is not ...:  # null: the default
        value = default
    if value is ...:
        raise InputError(f"'{name}' is required")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InputError(f"'{name}' must be a {kind.__name__}")
    return value


@router.get("/projects")
async def list_projects(state: State) -> dict[str, Any]:
    return {"projects": [asdict(p) for p in state.store.list_projects()]}


@router.post("/projects", status_code=201, openapi_extra=body(ProjectCreate))
async def create_project(request: Request, state: State) -> dict[str, Any]:
    body = await read_json(request, ADMIN_BODY_LIMIT)
    project = state.store.create_project(_field(body, "name", str), _field(body, "description", str, ""))
    return asdict(project)


@router.get("/endpoints")
async def list_endpoints(state: State, project: str | None = None) -> dict[str, Any]:
    return {"endpoints": [endpoint_view(state, e) for e in state.store.list_endpoints(project)]}


@router.post("/endpoints", status_code=201, openapi_extra=body(EndpointCreate))
async def create_endpoint(request: Request, state: State) -> dict[str, Any]:
    body = await read_json(request, ADMIN_BODY_LIMIT)
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise InputError("'force' must be true or false")
    model = _field(body, "model", str, state.settings.default_model)
    precision = _field(body, "precision", str, state.settings.engine.precision)
    refuse_unoffered(precision)
    gate = deploy_gate.check(model, force, "pass --force, or \"force\": true in the API call")
    endpoint, key = state.store.create_endpoint(
        _field(body, "project", str), _field(body, "name", str), model,
        _field(body, "batch_size", int, 32), _field(body, "description", str, ""), precision, deploy_gate=gate,
        input_type=_field(body, "input_type", str, "none"))
    state.pool.deploy(endpoint)
    view = endpoint_view(state, state.store.get_endpoint_by_id(endpoint.id))
    return {"endpoint": view, "key": key, "curl": curl_line(view["urls"]["nlp"], key)}


@router.get("/projects/{project}/endpoints/{endpoint}")
async def show_endpoint(state: State, project: str, endpoint: str) -> dict[str, Any]:
    return endpoint_view(state, state.store.get_endpoint(project, endpoint))


@router.delete("/projects/{project}/endpoints/{endpoint}")
async def delete_endpoint(state: State, project: str, endpoint: str) -> dict[str, Any]:
    found = state.store.get_endpoint(project, endpoint)
    state.store.delete_endpoint(found.id)
    return {"deleted": found.id}


@router.post("/projects/{project}/endpoints/{endpoint}/rotate-key")
async def rotate_key(state: State, project: str, endpoint: str) -> dict[str, Any]:
    found = state.store.get_endpoint(project, endpoint)
    key = state.store.rotate_key(found.id)
    url = endpoint_urls(state.settings.base_url, found)["nlp"]
    return {"endpoint": found.id, "key": key, "curl": curl_line(url, key)}
