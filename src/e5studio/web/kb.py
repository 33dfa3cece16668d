"""Knowledge bases in the UI: the list with a create form, and a knowledge base's page (versions and their
stamps, the progress of a version being built, a search box, *Re-embed* with another endpoint).

Creating and re-embedding submit a knowledge-base job to the server's runner (:mod:`e5studio.control.kb_jobs`:
the same lifecycle as train and batch jobs, resumable from its job page after a crash); the page shows that
job's status and progress line, or, for a version built by ``e5studio kb`` in a terminal, its batch's.
The search box embeds the query through the version's endpoint (the *Try it* path) with ``query: `` and
searches the version exactly as the HTTP route does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from e5studio.control.job_records import KIND_KB, JobRecord
from e5studio.control.kb_jobs import DEFAULT_OVERLAP, KbCreate, submit_create, submit_reembed, whole_number
from e5studio.control.knowledge_bases import VERSION_BUILDING, KbVersion, KnowledgeBase
from e5studio.control.store import Endpoint, Store
from e5studio.engine.model_identity import model_identity
from e5studio.errors import ConflictError, E5StudioError, InputError
from e5studio.jobspec.layout import PROGRESS_FILE
from e5studio.jobspec.progress import read_status
from e5studio.retrieval.kb_stamp import check_model, endpoint_fields
from e5studio.retrieval.kb_vectors import EmbeddedCache, PgvectorChunks, SearchRequest, check_request
from e5studio.vocabulary import add_prefix
from e5studio.web.common import SessionDep, read_form, render, text_field, ui_session
from e5studio.web.state import web_state

router = APIRouter(prefix="/ui", dependencies=[Depends(ui_session)])
_SEARCHERS = "kb_ui_searchers"


def _store(request: Request) -> Store:
    store: Store = web_state(request).store
    return store


def _searchers(request: Request) -> tuple[EmbeddedCache, PgvectorChunks]:
    found = getattr(request.app.state, _SEARCHERS, None)
    if found is None:
        found = (EmbeddedCache(), PgvectorChunks())
        setattr(request.app.state, _SEARCHERS, found)
    return found


def _list_page(request: Request, status_code: int = 200, error: str = "", form: dict[str, str] | None = None
               ) -> Response:
    store = _store(request)
    return render(request, "kbs.html", status_code=status_code, kbs=store.list_kbs(), endpoints=store.list_endpoints(),
                  error=error, form=form or {})


@router.get("/kb")
async def kb_list(request: Request) -> Response:
    return _list_page(request)


@router.post("/kb")
async def kb_create(request: Request, session: SessionDep) -> Response:
    raw = await read_form(request, session)
    form = {k: text_field(raw, k) for k in ("name", "endpoint", "data", "format", "text_field", "id_field", "chunking",
                                            "chunk_tokens", "overlap", "store_url", "description")}
    try:
        spec = KbCreate(name=form["name"], endpoint=form["endpoint"], data=form["data"],
                        format=form["format"] or "auto", text_field=form["text_field"], id_field=form["id_field"],
                        chunking=form["chunking"] or "tokens",
                        chunk_tokens=whole_number("chunk_tokens", form["chunk_tokens"], None),
                        overlap=whole_number("overlap", form["overlap"], DEFAULT_OVERLAP) or 0,
                        store_url=form["store_url"], description=form["description"])
        kb, _ = submit_create(web_state(request).jobs, spec)
    except InputError as exc:
        return _list_page(request, 400, str(exc), form)
    return RedirectResponse(f"/ui/kb/{kb.project_id}/{kb.id}", status_code=303)


def _job(store: Store, kb: KnowledgeBase) -> JobRecord | None:
    """The newest job that builds (or built) one of the knowledge base's versions."""
    return next((job for job in store.list_jobs(KIND_KB) if job.params.get("kb") == kb.id), None)


def _progress(version: KbVersion) -> dict[str, Any] | None:
    batches = sorted((Path(version.path) / "batches").glob(f"*/{PROGRESS_FILE}"))
    if not batches:
        return None
    try:
        status = json.loads(batches[-1].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def _stale(request: Request, current: KbVersion, serving: Endpoint) -> str:
    """Why the endpoint's model cannot search ``current`` (the one check of the search routes), else ""."""
    engine = dataclasses.replace(web_state(request).settings.engine, model=serving.model, precision=serving.precision)
    try:
        check_model(current.stamp, model_identity(engine), serving.precision, endpoint_fields(serving), "search")
    except ConflictError as exc:
        return str(exc)
    except E5StudioError:  # the model cannot be read here (not downloaded yet): the search route will say why
        return ""
    return ""


async def _kb_page(request: Request, kb: KnowledgeBase, status_code: int = 200, **context: Any) -> Response:
    store = _store(request)
    versions = store.kb_versions(kb.id)
    current = next((v for v in versions if v.version == kb.current_version), None)
    building = next((v for v in versions if v.status == VERSION_BUILDING), None)
    endpoints = [e for e in store.list_endpoints(kb.project_id)]
    serving = next((e for e in endpoints if e.id == kb.endpoint_id), None)
    # a thread: the model's checksum is read from its cache, or computed once (seconds for E5-Large)
    stale = await asyncio.to_thread(_stale, request, current, serving) if current and serving else ""
    job = _job(store, kb)
    progress = read_status(Path(job.output)) if job is not None else None
    if building is not None and progress is None:  # built by `e5studio kb` in a terminal
        progress = _progress(building)
    return render(request, "kb.html", status_code=status_code, kb=kb, versions=versions, current=current,
                  building=building, job=job, progress=progress, endpoints=endpoints, stale=stale, **context)


@router.get("/kb/{project}/{kb}")
async def kb_show(request: Request, project: str, kb: str, q: str = "", k: str = "10", by_document: str = ""
                  ) -> Response:
    found = _store(request).get_kb(project, kb)
    if not q:
        return await _kb_page(request, found)
    try:
        hits, version = await _search(request, found, q, k, by_document == "on")
    except ConflictError as exc:  # another model than the stamped one (or no complete version yet)
        return await _kb_page(request, found, 409, error=str(exc), q=q)
    except InputError as exc:
        return await _kb_page(request, found, 400, error=str(exc), q=q)
    return await _kb_page(request, found, hits=hits, searched=version, q=q, by_document=by_document == "on")


async def _search(request: Request, kb: KnowledgeBase, query: str, k_text: str, by_document: bool
                  ) -> tuple[list[Any], int]:
    store = _store(request)
    found, version = store.current_kb_version(kb.project_id, kb.id)
    if not k_text.isdigit():
        raise InputError(f"k must be a whole number, got {k_text!r}")
    k, filter, by_document = check_request(int(k_text), None, by_document, version.fields)
    if len(query) > 8192:
        raise InputError("the query is longer than 8,192 characters")
    endpoint = store.get_endpoint_by_id(version.endpoint_id)
    refused = await asyncio.to_thread(_stale, request, version, endpoint)
    if refused:
        raise ConflictError(refused)
    rows = await web_state(request).embed(request, endpoint, [add_prefix(query, "query")])
    search = SearchRequest(rows.rows[0], k, filter, by_document)
    embedded, pgvector = _searchers(request)
    if found.store_url:
        hits = await asyncio.to_thread(pgvector.search, found.store_url, version.table_name, search)
    else:
        hits = await asyncio.to_thread(lambda: embedded.get(version.path, version.generation).search(search))
    return [h.to_json() for h in hits], version.version


@router.post("/kb/{project}/{kb}/reembed")
async def kb_reembed(request: Request, project: str, kb: str, session: SessionDep) -> Response:
    raw = await read_form(request, session)
    found, _ = submit_reembed(web_state(request).jobs, project, kb, text_field(raw, "endpoint") or None)
    return RedirectResponse(f"/ui/kb/{found.project_id}/{found.id}", status_code=303)
