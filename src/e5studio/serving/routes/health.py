"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from e5studio.control.store import DEPLOYING
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
    """200 once no endpoint is still deploying (every Live endpoint's model is loaded); 503 before."""
    endpoints = state.store.list_endpoints()
    deploying = [e.name for e in endpoints if e.status == DEPLOYING]
    body = {"ready": not deploying, "deploying": deploying,
            "endpoints": {e.name: e.status for e in endpoints},
            "reasons": {e.name: e.status_reason for e in endpoints if e.status == DEPLOYING}}
    return JSONResponse(body, status_code=503 if deploying else 200)


@router.get("/metrics", response_class=PlainTextResponse, responses=errors(*PUBLIC_ERRORS))
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
