"""Knowledge bases in the UI: the list with a create form, and a knowledge base's page (versions and their
stamps, the progress of a version being built, a search box, *Re-embed* with another endpoint).

Creating and re-embedding run ``e5studio kb create`` / ``kb reembed`` as a process of their own on this data
directory and store (the web half imports no job code); its log is ``<data dir>/kb/logs/``, its progress the
batch's ``progress.json`` (shown on the page), and rerunning the same command continues it after a crash.
The search box embeds the query through the version's endpoint (the *Try it* path) with ``query: `` and
searches the version exactly as the HTTP route does.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from e5studio.control.database import STORE_ENV, check_name
from e5studio.control.knowledge_bases import VERSION_BUILDING, KbVersion, KnowledgeBase, check_store_url
from e5studio.control.store import Store
from e5studio.errors import InputError
from e5studio.jobspec.layout import PROGRESS_FILE
from e5studio.jobspec.params import plain_text
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


def _spawn(request: Request, args: list[str], name: str) -> Path:
    """``e5studio kb ARGS`` as a process of its own on this server's data dir and store; its log file."""
    ui = web_state(request)
    logs = Path(ui.settings.data_dir) / "kb" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    env = dict(os.environ)
    if ui.settings.store:
        env[STORE_ENV] = ui.settings.store
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "e5studio", "kb", *args, "--data-dir", str(ui.settings.data_dir),
                                 "--no-progress"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    threading.Thread(target=proc.wait, name="kb-process-reaper", daemon=True).start()
    return log


def _list_page(request: Request, status_code: int = 200, error: str = "", form: dict[str, str] | None = None
               ) -> Response:
    store = _store(request)
    return render(request, "kbs.html", status_code=status_code, kbs=store.list_kbs(), endpoints=store.list_endpoints(),
                  error=error, form=form or {})


@router.get("/kb")
async def kb_list(request: Request) -> Response:
    return _list_page(request)


def _int_field(form: dict[str, str], name: str, default: int | None) -> int | None:
    raw = form.get(name, "")
    if not raw:
        return default
    if not raw.isdigit():
        raise InputError(f"{name.replace('_', ' ')} must be a whole number, got {raw!r}")
    return int(raw)


@router.post("/kb")
async def kb_create(request: Request, session: SessionDep) -> Response:
    raw = await read_form(request, session)
    form = {k: text_field(raw, k) for k in ("name", "endpoint", "data", "text_field", "id_field", "chunking",
                                            "chunk_tokens", "overlap", "store_url", "description")}
    try:
        check_name("knowledge base", form["name"])
        endpoint = _store(request).get_endpoint_by_id(form["endpoint"])
        data = Path(plain_text("data", form["data"])).expanduser()
        if not form["data"] or not data.exists():
            raise InputError(f"path {form['data']!r} does not exist on the server")
        chunking = {"mode": form["chunking"] or "tokens", "chunk_tokens": _int_field(form, "chunk_tokens", None),
                    "overlap": _int_field(form, "overlap", 32)}
        if chunking["mode"] not in ("tokens", "none"):
            raise InputError("chunking must be tokens or none")
        size, overlap = chunking["chunk_tokens"], chunking["overlap"]
        if size is not None and (size < 8 or overlap * 2 > size):  # type: ignore[operator]
            raise InputError(f"chunk tokens must be at least 8 and at least twice the overlap ({overlap})")
        for name in ("text_field", "id_field", "description"):
            plain_text(name, form[name])
        kb = _store(request).create_kb(endpoint.project_id, form["name"], endpoint.id, chunking=chunking,
                                       store_url=check_store_url(form["store_url"]),
                                       text_field=form["text_field"] or "contents", id_field=form["id_field"],
                                       description=form["description"])
    except InputError as exc:
        return _list_page(request, 400, str(exc), form)
    args = ["create", kb.name, "--project", kb.project_id, "--endpoint", endpoint.id, "--data", str(data.resolve())]
    args += ["--text-field", form["text_field"]] if form["text_field"] else []
    args += ["--id-field", form["id_field"]] if form["id_field"] else []
    _spawn(request, args, kb.name)
    return RedirectResponse(f"/ui/kb/{kb.project_id}/{kb.id}", status_code=303)


def _progress(version: KbVersion) -> dict[str, Any] | None:
    batches = sorted((Path(version.path) / "batches").glob(f"*/{PROGRESS_FILE}"))
    if not batches:
        return None
    try:
        status = json.loads(batches[-1].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def _kb_page(request: Request, kb: KnowledgeBase, status_code: int = 200, **context: Any) -> Response:
    store = _store(request)
    versions = store.kb_versions(kb.id)
    current = next((v for v in versions if v.version == kb.current_version), None)
    building = next((v for v in versions if v.status == VERSION_BUILDING), None)
    endpoints = [e for e in store.list_endpoints(kb.project_id)]
    serving = next((e for e in endpoints if e.id == kb.endpoint_id), None)
    stale = current is not None and serving is not None and (
        (current.stamp.get("endpoint") or {}).get("model") != serving.model
        or current.stamp.get("precision") != serving.precision)
    return render(request, "kb.html", status_code=status_code, kb=kb, versions=versions, current=current,
                  building=building, progress=_progress(building) if building else None, endpoints=endpoints,
                  stale=stale, **context)


@router.get("/kb/{project}/{kb}")
async def kb_show(request: Request, project: str, kb: str, q: str = "", k: str = "10", by_document: str = ""
                  ) -> Response:
    found = _store(request).get_kb(project, kb)
    if not q:
        return _kb_page(request, found)
    try:
        hits, version = await _search(request, found, q, k, by_document == "on")
    except InputError as exc:
        return _kb_page(request, found, 400, error=str(exc), q=q)
    return _kb_page(request, found, hits=hits, searched=version, q=q, by_document=by_document == "on")


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
    found = _store(request).get_kb(project, kb)
    endpoint = _store(request).get_endpoint_by_id(text_field(raw, "endpoint"))
    if endpoint.project_id != found.project_id:
        raise InputError("the endpoint must be one of the knowledge base's project")
    _spawn(request, ["reembed", found.name, "--project", found.project_id, "--endpoint", endpoint.id], found.name)
    return RedirectResponse(f"/ui/kb/{found.project_id}/{found.id}", status_code=303)
