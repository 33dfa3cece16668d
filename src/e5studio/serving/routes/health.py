"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from e5studio.control.replicas import MODEL_FAILED, MODEL_READY
from e5studio.control.replicas import Readiness as ReplicaCount
from e5studio.control.store import DEPLOYING, FAILED, LIVE
from e5studio.serving.schemas import PUBLIC_ERRORS, Readiness, errors
from e5studio.serving.state import State

router = APIRouter()


@router.get("/health", responses=errors(*PUBLIC_ERRORS))
async def health() -> dict[str, Any]:
    """The process answers (liveness)."""
    return {"status": "ok"}


@router.get("/ready", response_model=Readiness,
            responses={**errors(*PUBLIC_ERRORS), 503: {"model": Readiness, "description": "still deploying"}})
async def ready(state: State) -> JSONResponse:
    """Whether this replica has the models of the endpoints it serves: 503 until every model found at start is
    loaded here (or failed); then 200 (an endpoint created later answers 503 Deploying on a replica still
    loading it, without taking the replica out of its load balancer)."""
    pool = state.pool
    endpoints = state.store.list_endpoints()
    here = {e.id: pool.state(e) for e in endpoints}
    status = {MODEL_READY: LIVE, MODEL_FAILED: FAILED}
    deploying = [e for e in endpoints if here[e.id] not in status]
    ready = pool.started_up()
    replicas = state.store.list_replicas()
    counts = {e.name: str(ReplicaCount(sum(r.endpoints.get(e.id) == MODEL_READY for r in replicas), len(replicas)))
              for e in endpoints}
    body = {"ready": ready, "deploying": [e.name for e in deploying],
            "endpoints": {e.name: status.get(here[e.id] or "", DEPLOYING) for e in endpoints},
            "reasons": {e.name: e.status_reason for e in deploying}, "replica": pool.replica_id,
            "replicas": counts}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse, responses=errors(*PUBLIC_ERRORS))
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
