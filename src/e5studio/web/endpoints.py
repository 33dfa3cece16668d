"""Log in and out; projects; endpoints (list with live status, create, page, rotate key, delete, try it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from e5studio.control.replicas import MODEL_FAILED, MODEL_READY, Replica
from e5studio.control.store import LIVE, Endpoint
from e5studio.engine.checkpoint import ALIASES
from e5studio.engine.cpu import cpu_features
from e5studio.errors import InputError
from e5studio.jobspec import deploy_gate
from e5studio.vocabulary import INPUT_TYPES, PRECISION_HELP, add_prefix, one_of
from e5studio.web.common import SessionDep, login_url, read_form, read_json, render, safe_next, text_field, ui_session
from e5studio.web.sessions import COOKIE_NAME, SESSION_TTL_S
from e5studio.web.state import UI, WebState, web_state

public = APIRouter(prefix="/ui")
router = APIRouter(prefix="/ui", dependencies=[Depends(ui_session)])

BATCH_SIZE_HELP = {
    32: "32: for vectorising a knowledge base (many texts per request, highest throughput)",
    1: "1: for a live service answering one query at a time (lowest latency per request)",
}
LOADING = "Loading"  # shown, never stored: Live in the store, the model not ready on any replica yet
REASON_SHORT_CHARS = 120
# the name rule of the store (control.database.NAME_PATTERN) as an HTML pattern: browsers compile it with the
# ``v`` flag, where a "-" inside a class must be escaped
NAME_INPUT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
MODELS_DIR = "models"  # checkpoints copied into <data dir>/models/<name>/ are offered in the model lists
TRY_LIMIT_BYTES = 64 * 1024
TRY_MAX_TEXTS = 8


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# ---------------------------------------------------------------------------------------------- login


@public.get("/login")
async def login_form(request: Request, next: str = "/ui/") -> Response:  # noqa: A002 - the query name
    return render(request, "login.html", next=safe_next(next), error="")


@public.post("/login")
async def login(request: Request, ui: UI) -> Response:
    """The admin token in, a session cookie out (HTTP-only, SameSite=Strict)."""
    address = request.client.host if request.client else "unknown"
    ui.login_guard.check(address)
    form = await request.form(max_files=0, max_fields=8)
    token, target = text_field(form, "token"), safe_next(text_field(form, "next"))
    if not token or not ui.store.check_admin_token(token):
        ui.login_guard.failed(address)
        return render(request, "login.html", status_code=401, next=target,
                      error="That admin token is not valid. It is printed once when `e5studio serve` first starts.")
    session_id, _ = ui.sessions.create()
    response = _redirect(target)
    response.set_cookie(COOKIE_NAME, session_id, max_age=int(SESSION_TTL_S), httponly=True, samesite="strict",
                        secure=_secure(request, ui), path="/ui")
    return response


def _secure(request: Request, ui: WebState) -> bool:
    """The session cookie only over HTTPS: told so (``--cookie-secure``, an https public URL), or the request
    came over HTTPS (directly, or through a proxy ``--forwarded-allow-ips`` trusts)."""
    return ui.settings.secure_cookies or request.url.scheme == "https"


@router.post("/logout")
async def logout(request: Request, ui: UI, session: SessionDep) -> Response:
    await read_form(request, session)
    ui.sessions.delete(request.cookies.get(COOKIE_NAME))
    response = _redirect(login_url("/ui/"))
    # the same attributes as the cookie it ends (a browser may refuse to replace a Secure cookie otherwise)
    response.delete_cookie(COOKIE_NAME, path="/ui", httponly=True, samesite="strict", secure=_secure(request, ui))
    return response


# ---------------------------------------------------------------------------------------------- projects


@router.get("/")
async def home(request: Request) -> Response:
    return _redirect("/ui/projects")


@router.get("/projects")
async def projects(request: Request, ui: UI) -> Response:
    store = ui.store
    counts: dict[str, int] = {}
    for endpoint in store.list_endpoints():
        counts[endpoint.project_id] = counts.get(endpoint.project_id, 0) + 1
    return render(request, "projects.html", projects=store.list_projects(), counts=counts, error="", form={},
                  name_pattern=NAME_INPUT_PATTERN)


@router.post("/projects")
async def create_project(request: Request, ui: UI, session: SessionDep) -> Response:
    form = await read_form(request, session)
    name, description = text_field(form, "name"), text_field(form, "description")
    try:
        project = ui.store.create_project(name, description)
    except InputError as exc:
        return render(request, "projects.html", status_code=400, projects=ui.store.list_projects(), counts={},
                      error=str(exc), form={"name": name, "description": description},
                      name_pattern=NAME_INPUT_PATTERN)
    return _redirect(f"/ui/projects/{project.name}")


@router.get("/projects/{project}")
async def project_page(request: Request, ui: UI, project: str) -> Response:
    store = ui.store
    found = store.get_project(project)
    endpoints, replicas = store.list_endpoints(found.id), store.list_replicas()
    return render(request, "project.html", project=found, endpoints=endpoints,
                  live={e.id: endpoint_json(ui, e, replicas) for e in endpoints})


# ---------------------------------------------------------------------------------------------- endpoints


def model_choices(request: Request) -> list[tuple[str, str]]:
    """(value, label) of the models a new endpoint can serve: aliases, fine-tuned jobs, models in use."""
    ui = web_state(request)
    store = ui.store
    choices = [(alias, f"{alias} ({hub_id})") for alias, hub_id in ALIASES.items() if alias != "minilm"]
    for job in store.list_jobs("train"):
        final_dir = job.metrics.get("final_dir")
        if job.status == "Succeeded" and final_dir:
            dataset = job.params.get("dataset", "?")
            choices.append((str(final_dir), f"fine-tuned: job {job.id[:8]} ({job.model} on {dataset})"))
    models_dir: Path = ui.settings.data_dir / MODELS_DIR
    if models_dir.is_dir():
        for directory in sorted(p.parent for p in models_dir.glob("*/config.json")):
            choices.append((str(directory.resolve()), f"local: {directory.name} ({directory.resolve()})"))
    known = {value for value, _ in choices}
    for endpoint in store.list_endpoints():
        if endpoint.model not in known:
            known.add(endpoint.model)
            choices.append((endpoint.model, f"{endpoint.model} (used by {endpoint.project_name}/{endpoint.name})"))
    return choices


# the endpoint's default role (`input_type`), shown on the new-endpoint form; a request may name its own
INPUT_TYPE_HELP = {
    "none": "none: texts embedded as sent (the default; SambaStudio clients send their own prefixes)",
    "query": "query: 'query: ' added to every text that lacks it (a search box, a question-answering client)",
    "passage": "passage: 'passage: ' added to every text that lacks it (a client indexing documents)",
}


def _endpoint_form(request: Request, status_code: int = 200, error: str = "", **values: Any) -> Response:
    ui = web_state(request)
    defaults = {"project": "", "name": "", "description": "", "model": ui.settings.default_model,
                "model_other": "", "batch_size": "32", "precision": ui.settings.engine.precision,
                "input_type": "none"}
    return render(request, "endpoint_new.html", status_code=status_code, error=error,
                  projects=ui.store.list_projects(), models=model_choices(request), batch_help=BATCH_SIZE_HELP,
                  input_type_help=INPUT_TYPE_HELP,
                  precision_help={p: h for p, h in PRECISION_HELP.items() if p in cpu_features().precisions},
                  gate_refused=error.startswith("deploy gate:"),
                  name_pattern=NAME_INPUT_PATTERN, form={**defaults, **values})


@router.get("/endpoints/new")
async def new_endpoint(request: Request, project: str = "") -> Response:
    return _endpoint_form(request, project=project)


@router.post("/endpoints")
async def create_endpoint(request: Request, ui: UI, session: SessionDep) -> Response:
    form = await read_form(request, session)
    values = {k: text_field(form, k) for k in ("project", "name", "description", "model", "model_other",
                                                "batch_size", "precision", "input_type")}
    model = values["model_other"] or values["model"]
    try:
        if values["batch_size"] not in ("1", "32"):
            raise InputError(f"batch size must be 1 or 32, got {values['batch_size']!r}")
        gate = deploy_gate.check(model, text_field(form, "force") == "yes",
                                 "tick 'deploy anyway' on the form; the choice is recorded with the endpoint")
        endpoint, key = ui.store.create_endpoint(values["project"], values["name"], model,
                                                 int(values["batch_size"]), values["description"],
                                                 values["precision"] or ui.settings.engine.precision,
                                                 deploy_gate=gate, input_type=values["input_type"] or "none")
    except InputError as exc:
        return _endpoint_form(request, 400, str(exc), **values)
    ui.deploy(endpoint)
    session.flash(f"key:{endpoint.id}", key)
    return _redirect(f"/ui/endpoints/{endpoint.id}")


def endpoint_json(ui: WebState, endpoint: Endpoint, replicas: list[Replica] | None = None) -> dict[str, Any]:
    """What the pages show of an endpoint and poll for: ``shown_status`` is the store's status, except that a
    Live endpoint whose model is ready on no replica yet (right after creation) says it is loading."""
    stats = ui.endpoint_stats(endpoint.id)
    states = [r.endpoints.get(endpoint.id) for r in (ui.store.list_replicas() if replicas is None else replicas)]
    ready = states.count(MODEL_READY)
    readiness = f"ready on {ready} of {len(states)} replica{'' if len(states) == 1 else 's'}"
    shown = endpoint.status
    if endpoint.status == LIVE and ready == 0 and MODEL_FAILED not in states:
        shown, readiness = LOADING, f"loading the model: {readiness}"
    return {"id": endpoint.id, "name": endpoint.name, "project": endpoint.project_name, "status": endpoint.status,
            "shown_status": shown, "reason": endpoint.status_reason,
            "reason_short": short_reason(endpoint.status_reason),
            "requests": stats.count, "errors": stats.errors, "p50_ms": stats.p50_ms, "mean_ms": stats.mean_ms,
            "replicas": readiness, "replicas_ready": ready, "replicas_total": len(states)}


def short_reason(reason: str) -> str:
    """A status reason as a table shows it: its first line, cut at a word, with an ellipsis when there is more
    (the endpoint's page shows it whole)."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    if not lines:
        return ""
    first = lines[0]
    if len(first) > REASON_SHORT_CHARS:
        first = first[:REASON_SHORT_CHARS].rsplit(" ", 1)[0]
    return first if first == reason.strip() else first.rstrip(" :;,") + " …"


@router.get("/endpoints/{endpoint_id}")
async def endpoint_page(request: Request, ui: UI, endpoint_id: str, session: SessionDep) -> Response:
    endpoint = ui.store.get_endpoint_by_id(endpoint_id)
    urls = ui.endpoint_urls(endpoint)
    key = session.pop_flash(f"key:{endpoint.id}")
    return render(request, "endpoint.html", endpoint=endpoint, urls=urls, key=key,
                  gate=deploy_gate.summary(endpoint.deploy_gate),
                  curl=ui.curl_line(urls["nlp"], key) if key else "", live=endpoint_json(ui, endpoint),
                  batch_help=BATCH_SIZE_HELP[endpoint.batch_size])


@router.post("/endpoints/{endpoint_id}/rotate-key")
async def rotate_key(request: Request, ui: UI, endpoint_id: str, session: SessionDep) -> Response:
    await read_form(request, session)
    endpoint = ui.store.get_endpoint_by_id(endpoint_id)
    session.flash(f"key:{endpoint.id}", ui.store.rotate_key(endpoint.id))
    return _redirect(f"/ui/endpoints/{endpoint.id}")


@router.post("/endpoints/{endpoint_id}/delete")
async def delete_endpoint(request: Request, ui: UI, endpoint_id: str, session: SessionDep) -> Response:
    await read_form(request, session)
    endpoint = ui.store.get_endpoint_by_id(endpoint_id)
    ui.store.delete_endpoint(endpoint.id)
    return _redirect(f"/ui/projects/{endpoint.project_name}")


@router.get("/api/endpoints")
async def endpoints_status(ui: UI, project: str | None = None) -> dict[str, Any]:
    """Status, reason, request count and latency of every endpoint (polled by the pages)."""
    replicas = ui.store.list_replicas()
    return {"endpoints": [endpoint_json(ui, e, replicas) for e in ui.store.list_endpoints(project)]}


def _try_texts(body: dict[str, Any]) -> list[str]:
    """The texts with their E5 prefixes: each text has its own role (``input_types``, one per text: the sample
    pairs a query with a passage, and E5 embeds each side with its own prefix); without roles, as typed."""
    texts = body.get("texts")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InputError("'texts' must be a non-empty list of strings")
    if len(texts) > TRY_MAX_TEXTS:
        raise InputError(f"'texts' has {len(texts)} texts; the try box takes at most {TRY_MAX_TEXTS}")
    if "input_type" in body:  # one role for every text was the old box's mistake: refused, not ignored
        raise InputError("'input_type' is replaced by 'input_types': one input type per text")
    roles = body.get("input_types", ["none"] * len(texts))
    if not isinstance(roles, list) or len(roles) != len(texts):
        raise InputError("'input_types' must be a list with one input type per text")
    for role in roles:
        if not isinstance(role, str) or role not in INPUT_TYPES:
            raise InputError(f"each of 'input_types' must be {one_of(INPUT_TYPES)}, got {role!r}")
    return [add_prefix(text, role) for text, role in zip(texts, roles, strict=True)]


@router.post("/api/endpoints/{endpoint_id}/try")
async def try_endpoint(request: Request, ui: UI, endpoint_id: str, session: SessionDep) -> dict[str, Any]:
    """Embed one or two texts through the endpoint (the session stands in for the key): the dimension, the
    first values, and the cosine similarity of the two."""
    body = await read_json(request, session, TRY_LIMIT_BYTES)
    endpoint = ui.store.get_endpoint_by_id(endpoint_id)
    texts = _try_texts(body)
    # batch-size-1 endpoints answer one text per call, as a client of theirs would send them
    parts = [await ui.embed(request, endpoint, texts[i:i + endpoint.batch_size])
             for i in range(0, len(texts), endpoint.batch_size)]
    rows: np.ndarray = np.concatenate([p.rows for p in parts])
    answer: dict[str, Any] = {"texts": texts, "dimension": int(rows.shape[1]), "tokens": sum(p.tokens for p in parts),
                              "first_values": [[round(float(v), 6) for v in row[:8]] for row in rows],
                              "norms": [round(float(np.linalg.norm(row)), 6) for row in rows]}
    if len(rows) == 2:
        answer["cosine"] = round(float(rows[0] @ rows[1] / (np.linalg.norm(rows[0]) * np.linalg.norm(rows[1]))), 6)
    return answer
