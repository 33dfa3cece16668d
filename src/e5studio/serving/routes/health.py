"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from e5studio.control.store import DEPLOYING

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, Any]:
    """The process answers (liveness)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 once no endpoint is still deploying (every Live endpoint's model is loaded); 503 before."""
    endpoints = request.app.state.inference.store.list_endpoints()
    deploying = [e.name for e in endpoints if e.status == DEPLOYING]
    body = {"ready": not deploying, "deploying": deploying,
            "endpoints": {e.name: e.status for e in endpoints}}
    return JSONResponse(body, status_code=503 if deploying else 200)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
