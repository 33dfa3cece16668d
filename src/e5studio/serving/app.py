"""App factory: wires settings, store, loaded models, routes, errors, metrics and access logs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from e5studio import __version__
from e5studio.control.job_runner import JobRunner
from e5studio.control.store import Store
from e5studio.engine.embedder import Embedder
from e5studio.errors import E5StudioError
from e5studio.serving.http_errors import error_body, status_for
from e5studio.serving.inference import InferenceService
from e5studio.serving.metrics import Metrics
from e5studio.serving.models import ModelPool
from e5studio.serving.routes import admin, health, openai, sambastudio
from e5studio.settings import EngineSettings, ServeSettings
from e5studio.web.mount import error_page, is_ui_page, mount_ui

access_log = logging.getLogger("e5studio.access")
JOB_POLL_S = 1.0
JOB_STOP_TIMEOUT_S = 20.0
INFERENCE_ROUTES = ("/api/predict/", "/api/v2/predict/", "/v1/embeddings")


class AccessLog:
    """Pure ASGI middleware: one JSON access-log line per request (no texts, no keys) and request metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            state = scope.get("state", {})
            route = getattr(scope.get("route"), "path", "unmatched")  # a template, never a raw path
            endpoint = state.get("endpoint", "")
            if scope["path"].startswith(INFERENCE_ROUTES):
                if state.get("endpoint_id"):
                    self.metrics.endpoint_stats.record(state["endpoint_id"], status, elapsed)
                self.metrics.requests.labels(route, endpoint, str(status)).inc()
                self.metrics.request_seconds.labels(route).observe(elapsed)
                if status >= 400:
                    self.metrics.failures.labels(route, endpoint, state.get("error_type", str(status))).inc()
            access_log.info(json.dumps({
                "method": scope["method"], "route": route, "status": status, "ms": round(elapsed * 1000, 2),
                "endpoint": endpoint, "inputs": state.get("inputs"), "tokens": state.get("tokens"),
                "error": state.get("error_type"), "client": (scope.get("client") or ("", 0))[0],
            }))


def _error_response(request: Request, status: int, kind: str, message: str) -> Response:
    request.state.error_type = kind
    if is_ui_page(request):
        return error_page(request, status, message)
    return JSONResponse(error_body(message, kind, status), status_code=status)


def create_app(settings: ServeSettings, store: Store,
               loader: Callable[[EngineSettings], Embedder] = Embedder.load) -> FastAPI:
    metrics = Metrics()
    pool = ModelPool(store, settings.engine, metrics, settings.max_queue, loader=loader)

    jobs = JobRunner(store, settings.data_dir)

    async def watch_jobs() -> None:
        while True:
            await asyncio.sleep(JOB_POLL_S)
            try:
                await asyncio.to_thread(jobs.poll)
            except Exception:  # a failed poll must not end the watching
                logging.getLogger("e5studio").exception("polling the background jobs failed")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool.restore()
        await asyncio.to_thread(jobs.recover)  # jobs of a previous server: Interrupted (resumable)
        watcher = asyncio.create_task(watch_jobs())
        yield
        watcher.cancel()
        await asyncio.to_thread(jobs.close, JOB_STOP_TIMEOUT_S)  # children record Interrupted
        pool.close()  # queued requests finish before the workers stop

    app = FastAPI(title="e5studio", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.pool = pool
    app.state.jobs = jobs
    app.state.inference = InferenceService(store, pool, metrics, settings.max_body_bytes)

    @app.exception_handler(E5StudioError)
    async def on_error(request: Request, exc: E5StudioError) -> Response:
        status, kind = status_for(exc)
        return _error_response(request, status, kind, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        where = f"{request.method} {request.url.path}"
        return _error_response(request, exc.status_code, "http_error", f"{message}: {where}")

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        first: Any = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error_response(request, 400, "invalid_request_error", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> Response:
        logging.getLogger("e5studio").exception("unhandled error on %s", request.url.path)
        return _error_response(request, 500, "server_error", f"internal error: {type(exc).__name__}")

    for module in (sambastudio, openai, health, admin):
        app.include_router(module.router)
    mount_ui(app)
    app.add_middleware(AccessLog, metrics=metrics)
    return app
