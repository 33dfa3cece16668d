"""Knowledge-base search over HTTP, and the knowledge bases in the admin API.

``POST /api/kb/{project}/{kb}/search`` with the key of the endpoint that embeds the knowledge base's current
version: ``{"query": "...", "k": 10, "filter": {"field": value}, "by_document": false}`` -> hits (score,
document id, chunk index, text, offsets, metadata). The query gets ``query: `` (the passages got
``passage: ``). The current version is read from the store at every request, one row, so every replica
switches with the store and one search reads one version whole. A query model that is not the one the version
is stamped with (other weights: their checksum; another precision, dimension or window) is refused (409) naming
both stamps, by the same check as the CLI's (:func:`e5studio.retrieval.kb_stamp.check_model`).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from fastapi import APIRouter, Depends, Request

from e5studio.control.job_records import JobRecord
from e5studio.control.kb_jobs import KbCreate, submit_create, submit_reembed
from e5studio.control.knowledge_bases import KbVersion, KnowledgeBase
from e5studio.control.store import Endpoint
from e5studio.engine.model_identity import identity
from e5studio.errors import AuthError, ConflictError, ForbiddenError, InputError, NotFoundError
from e5studio.http_body import client_left, parse, read_json
from e5studio.jobspec.progress import read_status
from e5studio.retrieval.kb_stamp import check_model, endpoint_fields
from e5studio.retrieval.kb_vectors import EmbeddedCache, PgvectorChunks, SearchRequest, check_request
from e5studio.serving.edge import call_record
from e5studio.serving.inference import (
    INVALID_KEY,
    EndpointRef,
    InferenceService,
    Service,
    request_keys,
    require_keys,
)
from e5studio.serving.routes.admin import require_admin
from e5studio.serving.schemas import (
    ADMIN_ERRORS,
    INFERENCE_ERRORS,
    KbActivate,
    KbCreateRequest,
    KbReembedRequest,
    KbSearchRequest,
    body,
    errors,
)
from e5studio.serving.state import ServingState, State
from e5studio.serving.urls import KB_SEARCH_PATH
from e5studio.vocabulary import add_prefix

SEARCH_BODY_LIMIT = 64 * 1024
MAX_QUERY_CHARS = 8192
_SEARCHERS = "kb_searchers"

router = APIRouter()
admin_router = APIRouter(prefix="/api/admin", dependencies=[Depends(require_admin)],
                         responses=errors(*ADMIN_ERRORS))


class Searchers:
    """The loaded embedded versions (by folder and generation) and the pgvector connections of one app."""

    def __init__(self) -> None:
        self.embedded = EmbeddedCache()
        self.pgvector = PgvectorChunks()
        self.identities: WeakKeyDictionary[Any, dict[str, Any]] = WeakKeyDictionary()  # by loaded Embedder

    def search(self, kb: KnowledgeBase, version: KbVersion, request: SearchRequest) -> list[Any]:
        if kb.store_url:
            return self.pgvector.search(kb.store_url, version.table_name, request)
        return self.embedded.get(version.path, version.generation).search(request)


def _searchers(request: Request) -> Searchers:
    found = getattr(request.app.state, _SEARCHERS, None)
    if found is None:
        found = Searchers()
        setattr(request.app.state, _SEARCHERS, found)
    return found


def _served_identity(searchers: Searchers, embedder: Any, model: str) -> dict[str, Any]:
    """The identity of the model the endpoint serves now (its files' checksum computed once per loaded model:
    the vectors come from the weights it loaded)."""
    found = searchers.identities.get(embedder)
    if found is None:
        found = identity(model, Path(embedder.checkpoint.path), embedder.dim, embedder.max_length)
        searchers.identities[embedder] = found
    return found


def _query(body: dict[str, Any]) -> str:
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise InputError("'query' must be a non-empty string")
    if len(query) > MAX_QUERY_CHARS:
        raise InputError(f"'query' is {len(query):,} characters, at most {MAX_QUERY_CHARS:,}")
    return query


async def _authorize(service: InferenceService, state: ServingState, kb: KnowledgeBase, version: KbVersion,
                     keys: list[str], note: Any) -> Endpoint:
    """The version's endpoint, for a key of it or of another endpoint of the knowledge base's project (so a
    re-embedding with another endpoint switches without a window where the clients' keys are refused)."""
    try:
        return await service.authorize(EndpointRef(version.endpoint_id, kb.project_id), keys, note)
    except ForbiddenError:
        if not any(e.project_id == kb.project_id for e in state.store.endpoints_opened_by(keys)):
            raise
    return state.store.get_endpoint_by_id(version.endpoint_id)


@router.post(KB_SEARCH_PATH, openapi_extra=body(KbSearchRequest), responses=errors(*INFERENCE_ERRORS, 409))
async def search(request: Request, project: str, kb: str, service: Service, state: State) -> dict[str, Any]:
    note = call_record(request)
    keys = require_keys(request_keys(request))
    try:
        found, version = await asyncio.to_thread(state.store.current_kb_version, project, kb)
    except (NotFoundError, ConflictError):
        if not state.store.endpoints_opened_by(keys):  # nothing learnt of what exists without a valid key
            raise AuthError(INVALID_KEY) from None
        raise
    endpoint = await _authorize(service, state, found, version, keys, note)
    body = await read_json(request, SEARCH_BODY_LIMIT)
    query = _query(body)
    k, filter, by_document = check_request(body.get("k", 10), body.get("filter"), body.get("by_document", False),
                                           version.fields)
    embedder, _ = service.pool.get(endpoint)
    served = await asyncio.to_thread(_served_identity, _searchers(request), embedder, endpoint.model)
    check_model(version.stamp, served, endpoint.precision, endpoint_fields(endpoint), "search")
    embedded = await service.embed(endpoint, [add_prefix(query, "query")], client_left=partial(client_left, request),
                                   note=note)
    hits = await asyncio.to_thread(_searchers(request).search, found, version,
                                   SearchRequest(embedded.rows[0], k, filter, by_document))
    return {"knowledge_base": found.name, "version": version.version, "hits": [h.to_json() for h in hits]}


def kb_view(state: Any, kb: KnowledgeBase) -> dict[str, Any]:
    versions = [{k: v for k, v in asdict(version).items() if k not in ("kb_id", "path")}
                for version in state.store.kb_versions(kb.id)]
    return {**asdict(kb), "store": kb.store_kind, "versions": versions,
            "search_url": state.settings.base_url + KB_SEARCH_PATH.format(project=kb.project_id, kb=kb.id)}


@admin_router.get("/kb")
async def list_kbs(state: State, project: str | None = None) -> dict[str, Any]:
    return {"knowledge_bases": [kb_view(state, kb) for kb in state.store.list_kbs(project)]}


@admin_router.get("/projects/{project}/kb/{kb}")
async def show_kb(state: State, project: str, kb: str) -> dict[str, Any]:
    return kb_view(state, state.store.get_kb(project, kb))


@admin_router.post("/projects/{project}/kb/{kb}/activate", openapi_extra=body(KbActivate))
async def activate_version(request: Request, state: State, project: str, kb: str) -> dict[str, Any]:
    """Make a Ready version (``{"version": N}``) the one searches use (e.g. back to the previous one after a
    re-embedding)."""
    version = (await read_json(request, SEARCH_BODY_LIMIT)).get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputError("'version' must be a version number (1 or more)")
    found = state.store.get_kb(project, kb)
    state.store.switch_kb_version(found.id, version)
    return kb_view(state, state.store.get_kb(project, kb))


def job_view(state: ServingState, job: JobRecord) -> dict[str, Any]:
    """A job as the admin API shows it: status, progress, the phase line its process wrote last."""
    phase = read_status(Path(job.output))
    return {"id": job.id, "kind": job.kind, "status": job.status, "status_reason": job.status_reason,
            "step": job.step, "total_steps": job.total_steps, "progress": round(job.progress, 4),
            "phase_line": phase.get("line") if phase else None, "metrics": job.metrics,
            "params": {k: v for k, v in job.params.items() if k != "data"}, "created_at": job.created_at,
            "updated_at": job.updated_at, "url": state.settings.base_url + f"/api/admin/jobs/{job.id}"}


@admin_router.post("/projects/{project}/kb", status_code=202, openapi_extra=body(KbCreateRequest))
async def create_kb(request: Request, state: State, project: str) -> dict[str, Any]:
    """Record a knowledge base and submit the job that embeds its documents (202: follow ``job.url``)."""
    spec = parse(await read_json(request, SEARCH_BODY_LIMIT), KbCreateRequest)
    kb, job = await asyncio.to_thread(submit_create, state.jobs, KbCreate(project=project, **spec.model_dump()))
    return {"knowledge_base": kb_view(state, kb), "job": job_view(state, job)}


@admin_router.post("/projects/{project}/kb/{kb}/reembed", status_code=202, openapi_extra=body(KbReembedRequest))
async def reembed_kb(request: Request, state: State, project: str, kb: str) -> dict[str, Any]:
    """Submit the job that builds the knowledge base's next version (202: follow ``job.url``); searches switch
    to it when it is complete."""
    spec = parse(await read_json(request, SEARCH_BODY_LIMIT), KbReembedRequest)
    found, job = await asyncio.to_thread(submit_reembed, state.jobs, project, kb, spec.endpoint)
    return {"knowledge_base": kb_view(state, found), "job": job_view(state, job)}


@admin_router.get("/jobs/{job_id}")
async def show_job(state: State, job_id: str) -> dict[str, Any]:
    return job_view(state, state.store.get_job(job_id))
