"""The composition root: builds the control store, the model pool (one embedder + batcher per model), the
job runner and the metrics, and puts the serving API and the web UI on one app with one error handler.

The only module that knows both halves: ``e5studio.serving`` and ``e5studio.web`` never import each other;
each reads its own typed state (``serving.state.ServingState``, ``web.state.WebState``) built here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from e5studio import __version__
from e5studio.control.job_runner import JobRunner
from e5studio.control.store import Endpoint, Store
from e5studio.engine.embedder import Embedder
from e5studio.errors import ConflictError, E5StudioError, InputError, StoreUnavailableError
from e5studio.http_body import client_left
from e5studio.jobspec.layout import STORE_FILE
from e5studio.serving import state as serving_state
from e5studio.serving.allocator import freeze_after_loads, tune_malloc
from e5studio.serving.batcher import QueueLimits
from e5studio.serving.edge import DirectRoute, Edge, Metrics, arrival_stamped_protocol, call_record
from e5studio.serving.http_errors import describe, error_body, log_crash
from e5studio.serving.inference import Embedded, EndpointDirectory, InferenceService
from e5studio.serving.inference import install as install_inference
from e5studio.serving.models import ModelPool
from e5studio.serving.replica import HEARTBEAT_S, ReplicaHeartbeat
from e5studio.serving.routes import admin, health, kb, openai, sambastudio
from e5studio.serving.schemas import install_openapi
from e5studio.serving.throttle import LoginThrottle
from e5studio.serving.urls import INFERENCE_PATHS, curl_line, endpoint_urls
from e5studio.settings import EngineSettings, ServeSettings
from e5studio.web.mount import error_page, mount_ui
from e5studio.web.sessions import SessionStore
from e5studio.web.state import WebState

log = logging.getLogger("e5studio")
JOB_POLL_S = 1.0
JOB_STOP_TIMEOUT_S = 20.0
DEFAULT_PROJECT = "default"
# routes that read a body before any credential is checked: a small limit, and a deadline that a declared
# length cannot stretch (a form of the admin token and a path fits in far less)
UNAUTHENTICATED_BODIES = {"/ui/login": 16 * 1024}


def _private(folder: Path) -> None:
    """Narrow ``folder`` to ``0700`` when others may read or enter it and it is ours; refuse one that is open to
    others and belongs to someone else (its owner could change it back)."""
    info = folder.stat()
    if not info.st_mode & 0o077:
        return
    if info.st_uid != os.getuid():
        raise InputError(f"data directory {folder} is open to other users (mode {info.st_mode & 0o777:o}) and "
                         f"belongs to uid {info.st_uid}, not this user: use a directory of your own")
    os.chmod(folder, 0o700)
    log.warning("data directory %s was open to other users (mode %o): narrowed to 700", folder,
                   info.st_mode & 0o777)


def open_store(settings: ServeSettings) -> Store:
    """The control store: ``settings.store`` (a PostgreSQL URL that replicas share), else the SQLite file of the
    data directory (the directory is created ``0700`` whatever the store; the database ``0600``; sessions
    and job records are in there; store files of an older version are narrowed to ``0600`` here, and a data
    directory open to others to ``0700``). Migrations this code knows are applied; a store whose
    schema is newer than this code is refused (SchemaError)."""
    # job folders, uploads and logs live here whatever the store: readable by its owner only
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _private(settings.data_dir)
    if settings.store:
        return Store.open(settings.store, timeouts=settings.store_timeouts)
    for name in (STORE_FILE, STORE_FILE + "-wal", STORE_FILE + "-shm", STORE_FILE + "-journal"):
        if (settings.data_dir / name).exists():
            os.chmod(settings.data_dir / name, 0o600)
    return Store.open(settings.data_dir / STORE_FILE, timeouts=settings.store_timeouts)


def create_app(settings: ServeSettings, store: Store,
               loader: Callable[[EngineSettings], Embedder] = Embedder.load) -> FastAPI:
    """The server: serving routes and web UI over ``store``; models load when the app starts (lifespan)."""
    metrics = Metrics()
    limits = QueueLimits(max_requests=settings.max_queue, max_tokens=settings.max_queue_tokens,
                         max_wait_s=settings.max_queue_wait_s)
    pool = ModelPool(store, settings.engine, metrics, limits, loader=loader, replica_id=Store.new_job_id())
    replica = ReplicaHeartbeat(store, pool, settings.base_url)
    jobs = JobRunner(store, settings.data_dir, lease_s=settings.job_lease_s)
    inference = InferenceService(store, pool, settings.max_body_bytes, EndpointDirectory(store, metrics))
    throttle = LoginThrottle(failures=store)  # failed logins counted in the store: every replica throttles them

    # no /docs or /redoc: FastAPI's pages load Swagger's script from a public CDN on the UI's own origin, where
    # a changed script could read the UI's pages; /openapi.json is served for any OpenAPI viewer
    app = FastAPI(title="e5studio", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=partial(_lifespan, pool=pool, jobs=jobs, replica=replica, directory=inference.directory))
    serving_state.install(app, serving_state.ServingState(settings=settings, store=store, pool=pool,
                                                          metrics=metrics, login_throttle=throttle, jobs=jobs))
    install_inference(app, inference)
    handled = (E5StudioError, HTTPException, RequestValidationError)
    for error in handled:
        app.add_exception_handler(error, _answer_error)
    for module in (sambastudio, openai, health, admin, kb):
        app.include_router(module.router)
    app.include_router(kb.admin_router)
    install_openapi(app, INFERENCE_PATHS, admin.router.prefix)
    mount_ui(app, WebState(settings=settings, store=store, jobs=jobs, sessions=SessionStore(store), deploy=pool.deploy,
                           endpoint_urls=partial(endpoint_urls, settings.base_url), curl_line=curl_line,
                           endpoint_stats=metrics.endpoint_stats.get, embed=partial(_try_embed, inference),
                           login_guard=throttle))
    app.add_middleware(Edge, metrics=metrics, timeout_s=settings.body_timeout_s, answer=_answer_crash,
                       unauthenticated=UNAUTHENTICATED_BODIES, direct=_direct_routes(inference), handled=handled,
                       answer_error=_answer_error, on_write=inference.directory.changed)
    return app


def _direct_routes(inference: InferenceService) -> list[DirectRoute]:
    """The inference routes that take a body (POST), called by the edge itself with the service bound (the
    other methods of their paths, and ``/v1/models``, go through the framework)."""
    return [DirectRoute(route, partial(route.endpoint, service=inference))
            for module in (sambastudio, openai) for route in module.router.routes
            if isinstance(route, APIRoute) and route.methods == {"POST"}]


async def _try_embed(inference: InferenceService, request: Request, endpoint: Endpoint, texts: list[str]) -> Embedded:
    """The web UI's *Try it* box: the admin session stands in for the endpoint's key."""
    return await inference.embed(endpoint, texts, client_left=partial(client_left, request))


@asynccontextmanager
async def _lifespan(app: FastAPI, *, pool: ModelPool, jobs: JobRunner, replica: ReplicaHeartbeat,
                    directory: EndpointDirectory) -> AsyncIterator[None]:
    directory.start()  # the replica's copy of the endpoints and keys, read on a thread from now on
    pool.restore()  # every endpoint of the store starts deploying
    await asyncio.to_thread(replica.beat)  # this replica counts from now on
    await asyncio.to_thread(jobs.recover)  # jobs of a previous server: Interrupted (resumable)
    watcher = asyncio.create_task(_watch(jobs, pool, replica))
    yield
    watcher.cancel()
    await asyncio.to_thread(directory.close)
    await asyncio.to_thread(jobs.close, JOB_STOP_TIMEOUT_S)  # children record Interrupted
    # models still loading are waited for (exiting while a loader is inside the engine aborts the process);
    # queued requests finish before the workers stop
    await asyncio.to_thread(pool.close)
    try:
        await asyncio.to_thread(replica.leave)
    except Exception:  # the store may be gone: the heartbeat just stops
        log.exception("could not remove this replica from the store")


async def _watch(jobs: JobRunner, pool: ModelPool, replica: ReplicaHeartbeat) -> None:
    """Every second: the background jobs (ended processes, expired leases, queued jobs), endpoints created on
    another replica (their models load here too); every HEARTBEAT_S: this replica's heartbeat."""
    last_beat = 0.0
    away: set[str] = set()  # the rounds that met the store away (said once per outage; the store says when back)
    while True:
        await asyncio.sleep(JOB_POLL_S)
        now = asyncio.get_running_loop().time()
        beat = now - last_beat >= HEARTBEAT_S
        last_beat = now if beat else last_beat
        for what, step in (("polling the background jobs", jobs.poll),
                           ("deploying new endpoints, unloading unused models", pool.sync),
                           ("writing this replica's heartbeat", replica.beat if beat else None)):
            try:
                if step is not None:
                    await asyncio.to_thread(step)
                    away.discard(what)
            except StoreUnavailableError as exc:
                if what not in away:
                    away.add(what)
                    log.warning("%s failed: %s", what, exc)
            except Exception:  # a failed round must not end the watching
                log.exception("%s failed", what)


async def _answer_error(request: Request, exc: Exception, request_id: str | None = None) -> Response:
    """The one error handler: status and message from the one table (``serving.http_errors``); a page of the
    web UI shows them as HTML, everything else (API, the UI's JSON calls) gets the JSON error body."""
    answer = describe(exc, request.method, request.url.path)
    call_record(request).error_type = answer.kind
    page = error_page(request, answer.status, answer.message, exc)
    if page is not None:
        page.headers.update(answer.headers)
        return page
    headers = dict(answer.headers)
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    return JSONResponse(error_body(answer.message, answer.kind, answer.status, request_id),
                        status_code=answer.status, headers=headers)


async def _answer_crash(request: Request, exc: Exception, request_id: str) -> Response:
    """An exception no handler answered (a bug): logged with its traceback, answered as a 500 with its id."""
    log_crash(exc, request.method, request.url.path, request_id)
    return await _answer_error(request, exc, request_id)


def first_start(store: Store, settings: ServeSettings, endpoint_name: str) -> list[str]:
    """On a new data directory: make the admin token and, with no endpoint yet, a default project and an
    endpoint (batch size 32) for the settings' model. Returns the lines to print (secrets shown once)."""
    lines: list[str] = []
    token = store.ensure_admin_token()
    if token is not None:
        lines.append(f"Admin token (shown once; log in to the web UI with it; the CLI reads it from "
                     f"E5STUDIO_ADMIN_TOKEN): {token}")
    if not store.list_endpoints():
        try:  # replicas starting together on a new store: the first one makes these, the others find them
            if DEFAULT_PROJECT not in {p.name for p in store.list_projects()}:
                store.create_project(DEFAULT_PROJECT, "created by e5studio serve")
            model = settings.engine.model
            endpoint, key = store.create_endpoint(DEFAULT_PROJECT, endpoint_name, model, 32,
                                                  "created by e5studio serve", settings.engine.precision)
        except ConflictError:
            return lines
        url = endpoint_urls(settings.base_url, endpoint)["nlp"]
        lines.append(f"Endpoint {endpoint.name} (project {DEFAULT_PROJECT}, model {endpoint.model}, batch size 32)\n"
                     f"  URL: {url}\n  key (shown once): {key}\n  try: {curl_line(url, key)}")
    return lines


def start_banner(base_url: str, secrets: list[str], where: object) -> str:
    """What ``serve`` prints once the store is open: one block, set apart by blank lines so the secrets shown
    once are not lost among log lines, that ends with the 'Serving on' line."""
    from e5studio.engine.cpu import cpu_features

    cpu = cpu_features()
    lines = ["", f"Web UI: {base_url}/ui/ (log in with the admin token)", *secrets,
             f"CPU: {cpu.describe()}; precisions offered here: {', '.join(cpu.precisions)}",
             f"Serving on {base_url} (data in {where})", ""]
    return "\n".join(lines)


def serve(settings: ServeSettings, endpoint_name: str) -> None:
    """Open the store, set up a first start, serve until SIGINT/SIGTERM (graceful: queued requests finish,
    running jobs record Interrupted), close the store."""
    import uvicorn

    tune_malloc()  # also where the server is started without the CLI (done already: no harm)
    freeze_after_loads()  # full collections stop walking the loaded models' objects (serving/allocator.py)
    # what the server and its job processes write (uploads, job folders and logs, models) is its owner's only
    os.umask(0o077)
    with open_store(settings) as store:
        secrets = first_start(store, settings, endpoint_name)
        # forwarded headers only from the proxies the operator names (uvicorn would trust loopback's)
        config = uvicorn.Config(create_app(settings, store), host=settings.host, port=settings.port,
                                http=arrival_stamped_protocol(), access_log=False, log_config=None,
                                timeout_graceful_shutdown=30,
                                proxy_headers=bool(settings.forwarded_allow_ips),
                                forwarded_allow_ips=settings.forwarded_allow_ips or "")
        where = store.display_url if settings.store else settings.data_dir
        print(start_banner(settings.base_url, secrets, where), flush=True)
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal into the handlers it
        # found; handlers that ignore it make that a clean exit (status 0, store closed), not a traceback.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        uvicorn.Server(config).run()
