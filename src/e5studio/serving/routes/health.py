"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from e5studio.control.replicas import MODEL_FAILED, MODEL_READY
from e5studio.control.replicas import Readiness as ReplicaCount
from e5studio.control.store import DEPLOYING, FAILED, LIVE
from e5studio.errors import StoreUnavailableError
from e5studio.serving.routes.admin import is_admin
from e5studio.serving.schemas import PUBLIC_ERRORS, Readiness, errors
from e5studio.serving.state import ServingState, State

router = APIRouter()


@router.get("/health", responses=errors(*PUBLIC_ERRORS))
async def health() -> dict[str, Any]:
    """The process answers (liveness)."""
    return {"status": "ok"}


@router.get("/ready", response_model=Readiness,
            responses={**errors(*PUBLIC_ERRORS),
                       503: {"model": Readiness, "description": "still deploying, or the store is away before the "
                                                                "models were loaded"}})
async def ready(request: Request, state: State) -> JSONResponse:
    """Whether this replica has the models of the endpoints it serves: 503 until every model found at start is
    loaded here (or failed); then 200 (an endpoint created later answers 503 Deploying on a replica still
    loading it, without taking the replica out of its load balancer). Anyone gets the verdict and the counts
    of endpoints by status; the endpoints' names, reasons and replica counts only with the admin token.

    While the control store cannot be read, a replica whose models are loaded stays ready (200, ``store`` says
    why the store is away): it serves the keys it knew (fail static), and draining every replica of a shared
    store at once would stop the data plane; one that has not loaded them answers 503 with the reason and
    Retry-After (a load balancer drains only a replica that cannot serve)."""
    try:
        return _ready(request, state)
    except StoreUnavailableError as exc:
        return _ready_without_store(state, exc)


def _ready(request: Request, state: ServingState) -> JSONResponse:
    pool = state.pool
    endpoints = state.store.list_endpoints()
    here = {e.id: pool.state(e) for e in endpoints}
    status = {MODEL_READY: LIVE, MODEL_FAILED: FAILED}
    deploying = [e for e in endpoints if here[e.id] not in status]
    ready = pool.started_up()
    replicas = state.store.list_replicas()
    counts = {e.name: str(ReplicaCount(sum(r.endpoints.get(e.id) == MODEL_READY for r in replicas), len(replicas)))
              for e in endpoints}
    named = {e.name: status.get(here[e.id] or "", DEPLOYING) for e in endpoints}
    body: dict[str, Any] = {"ready": ready, "replica": pool.replica_id,
                            "counts": {s: sum(v == s for v in named.values()) for s in (LIVE, DEPLOYING, FAILED)}}
    if is_admin(request, state):
        body.update({"deploying": [e.name for e in deploying], "endpoints": named,
                     "reasons": {e.name: e.status_reason for e in deploying}, "replicas": counts})
    return JSONResponse(body, status_code=200 if ready else 503)


def _ready_without_store(state: ServingState, exc: StoreUnavailableError) -> JSONResponse:
    pool = state.pool
    ready = pool.started_up() and any(pool.model_ready(key) for key in pool.loaded_models())
    body: dict[str, Any] = {"ready": ready, "replica": pool.replica_id, "counts": {}, "store": f"unreachable: {exc}"}
    if ready:
        return JSONResponse(body)
    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    return JSONResponse(body, status_code=503, headers=headers)


@router.get("/metrics", response_class=PlainTextResponse, responses=errors(*PUBLIC_ERRORS))
async def metrics(request: Request, state: State) -> Response:
    """Prometheus metrics; series per endpoint and per model only with the admin token (a scraper sends it as its
    bearer credential), else summed over them: anyone else learns no endpoint or model name."""
    return Response(state.metrics.render(named=is_admin(request, state)),
                    media_type="text/plain; version=0.0.4; charset=utf-8")
