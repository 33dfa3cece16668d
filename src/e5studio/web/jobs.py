"""Train jobs and batch-embedding jobs in the UI: create, list with progress, a live page with charts and
log lines, cancel, resume, and *Deploy as endpoint* for a finished fine-tune."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from e5studio.control.job_records import JOB_RESUMABLE_STATUSES, JOB_RUNNING, KIND_BATCH_EMBED, KIND_TRAIN, JobRecord
from e5studio.control.job_runner import JobRunner
from e5studio.control.store import Store
from e5studio.engine.checkpoint import ALIASES
from e5studio.errors import InputError
from e5studio.jobspec import deploy_gate
from e5studio.jobspec.layout import eval_files
from e5studio.jobspec.progress import read_status
from e5studio.jobspec.train_params import (
    ADVANCED_FIELDS,
    FORM_LABELS,
    SMALL_MODEL_DEFAULTS,
    SMALL_MODEL_HUB_IDS,
    SMALL_MODEL_SOURCE,
    TRAIN_PARAMS,
)
from e5studio.web.common import SessionDep, read_form, render, text_field, ui_session
from e5studio.web.endpoints import BATCH_SIZE_HELP, model_choices
from e5studio.web.state import web_state

router = APIRouter(prefix="/ui", dependencies=[Depends(ui_session)])
LOG_LINES = 40


@dataclass(frozen=True)
class FormField:
    """One field of the train form, as the template shows it: ``default`` is the command's (the E5 recipe's),
    ``small_default`` the value measured for small base models where it differs (else the same)."""

    name: str
    label: str
    default: str
    small_default: str
    empty: str  # what an empty field means ("" where the field has a default)
    help: str
    advanced: bool

    def default_for(self, small: bool) -> str:
        return self.small_default if small else self.default

    def note(self, small: bool) -> str:
        """What the field's default is, as the form says it for a small or another base model."""
        if self.empty and not self.default:
            return f"Empty: {self.empty}."
        if self.small_default == self.default:
            return f"Default {self.default}."
        if small:
            return f"Default for this base model: {self.small_default}, {SMALL_MODEL_SOURCE}; E5 recipe {self.default}."
        return f"Default {self.default}, the E5 recipe; {self.small_default} when the base model is all-MiniLM-L6-v2."


def train_params() -> list[FormField]:
    """The form fields of a train job: every parameter the runner takes, its label, defaults and one line of
    help (all from the one spec, :mod:`e5studio.jobspec.train_params`)."""
    fields = []
    for p in TRAIN_PARAMS.values():
        default = "" if p.default is None else str(p.default)
        fields.append(FormField(p.name, FORM_LABELS[p.name], default, str(SMALL_MODEL_DEFAULTS.get(p.name, default)),
                                p.empty, p.help, p.name in ADVANCED_FIELDS))
    return fields


def small_models(train_jobs: list[JobRecord]) -> set[str]:
    """The model values (aliases, hub ids, the model folders of ``train_jobs``) whose base is a small model:
    the form offers the measured small-model defaults for them."""
    small = {name for name in (*ALIASES, *ALIASES.values()) if ALIASES.get(name, name) in SMALL_MODEL_HUB_IDS}
    bases: dict[str, str] = {}
    for job in train_jobs:
        final_dir = job.metrics.get("final_dir")
        if final_dir:
            bases[str(final_dir)] = job.model
    for model in bases:
        seen, base = {model}, bases[model]
        while base in bases and base not in seen:  # a fine-tune of a fine-tune: its first base decides
            seen.add(base)
            base = bases[base]
        if base in small:
            small.add(model)
    return small


def _store(request: Request) -> Store:
    store: Store = web_state(request).store
    return store


def _runner(request: Request) -> JobRunner:
    runner: JobRunner = web_state(request).jobs
    return runner


def job_phase(job: JobRecord) -> dict[str, Any] | None:
    """The phase the job's process wrote last (``progress.json`` in its folder): name, done/total, rate, ETA,
    and the line the command line shows."""
    return read_status(Path(job.output))


def _job_json(request: Request, job: JobRecord, details: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"id": job.id, "kind": job.kind, "status": job.status, "status_reason": job.status_reason,
                           "step": job.step, "total_steps": job.total_steps, "progress": round(job.progress, 4),
                           "model": job.model, "created_at": job.created_at}
    status = job_phase(job)
    out["phase"] = status.get("phase") if status else None
    out["phase_line"] = status.get("line") if status else None
    if details:
        runner = _runner(request)
        out["history"] = runner.history(job.id)
        out["evaluations"] = runner.evaluations(job.id)
        out["log"] = runner.log_tail(job.id, LOG_LINES)
    return out


# ---------------------------------------------------------------------------------------------- train jobs


def _train_form(request: Request, status_code: int = 200, error: str = "", form: dict[str, str] | None = None
                ) -> Response:
    train_jobs = _store(request).list_jobs(KIND_TRAIN)
    small = small_models(train_jobs)
    chosen = (form or {}).get("model_other") or (form or {}).get("model") or web_state(request).settings.default_model
    defaults = {p.name: p.default_for(chosen in small) for p in train_params()}
    defaults.update({"dataset": "", "model": web_state(request).settings.default_model, "model_other": "",
                     "eval_dir": ""})
    return render(request, "jobs.html", status_code=status_code, error=error,
                  jobs=train_jobs, datasets=_store(request).list_datasets(),
                  models=model_choices(request), params=train_params(), eval_files=", ".join(eval_files()),
                  small_models=sorted(small), chosen_small=chosen in small,
                  form={**defaults, **(form or {})})


@router.get("/jobs")
async def train_jobs(request: Request) -> Response:
    return _train_form(request)


@router.post("/jobs")
async def create_train_job(request: Request, session: SessionDep) -> Response:
    form = await read_form(request, session)
    values = {k: text_field(form, k) for k in ("dataset", "model", "model_other", "eval_dir",
                                                *(p.name for p in train_params()))}
    params = {p.name: values[p.name] for p in train_params()}  # empty: the default
    try:
        if not values["dataset"]:
            raise InputError("choose a dataset (add one on the Datasets page first)")
        job = _runner(request).start_train(values["dataset"], values["model_other"] or values["model"], params,
                                           values["eval_dir"] or None)
    except InputError as exc:
        return _train_form(request, 400, str(exc), values)
    return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: str) -> Response:
    store = _store(request)
    job = store.get_job(job_id)
    dataset = store.get_dataset(job.dataset_id) if job.dataset_id else None
    final_dir = _runner(request).final_model_dir(job)
    gate = deploy_gate.judge(str(final_dir)) if final_dir is not None else None
    return render(request, "job.html", job=job, dataset=dataset, final_dir=final_dir, phase=job_phase(job),
                  vectors_dir=_runner(request).vectors_dir(job), evaluations=_runner(request).evaluations(job.id),
                  gate=gate, gate_max_loss=deploy_gate.GATE_MAX_LOSS,
                  projects=store.list_projects(), batch_help=BATCH_SIZE_HELP,
                  can_cancel=job.status == JOB_RUNNING, can_resume=job.status in JOB_RESUMABLE_STATUSES)


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str, session: SessionDep) -> Response:
    await read_form(request, session)
    _runner(request).cancel(job_id)
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


@router.post("/jobs/{job_id}/resume")
async def resume_job(request: Request, job_id: str, session: SessionDep) -> Response:
    await read_form(request, session)
    _runner(request).resume(job_id)
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


@router.post("/jobs/{job_id}/deploy")
async def deploy_job(request: Request, job_id: str, session: SessionDep) -> Response:
    """A new endpoint serving the fine-tuned model of a finished job; its key is shown once on its page."""
    form = await read_form(request, session)
    job = _store(request).get_job(job_id)
    final_dir = _runner(request).final_model_dir(job)
    if final_dir is None:
        raise InputError(f"job {job_id} has no finished model to deploy (status {job.status})")
    batch_size = text_field(form, "batch_size", "32")
    if batch_size not in ("1", "32"):
        raise InputError(f"batch size must be 1 or 32, got {batch_size!r}")
    gate = deploy_gate.check(str(final_dir), text_field(form, "force") == "yes",
                             "tick 'deploy anyway' under the table on the job page")
    endpoint, key = _store(request).create_endpoint(
        text_field(form, "project"), text_field(form, "name"), str(final_dir), int(batch_size),
        f"fine-tuned by train job {job.id}", deploy_gate=gate)
    web_state(request).deploy(endpoint)
    session.flash(f"key:{endpoint.id}", key)
    return RedirectResponse(f"/ui/endpoints/{endpoint.id}", status_code=303)


@router.get("/api/jobs")
async def jobs_status(request: Request, kind: str | None = None) -> dict[str, Any]:
    return {"jobs": [_job_json(request, j) for j in _store(request).list_jobs(kind or None)]}


@router.get("/api/jobs/{job_id}")
async def job_status(request: Request, job_id: str) -> dict[str, Any]:
    """Status, progress, the loss and nDCG@10 history and the last log lines (polled by the job page)."""
    return _job_json(request, _store(request).get_job(job_id), details=True)


# ---------------------------------------------------------------------------------------------- batch jobs


def _batch_page(request: Request, status_code: int = 200, error: str = "", form: dict[str, str] | None = None
                ) -> Response:
    return render(request, "batch_jobs.html", status_code=status_code, error=error,
                  jobs=_store(request).list_jobs(KIND_BATCH_EMBED), datasets=_store(request).list_datasets(),
                  models=model_choices(request),
                  form={"dataset": "", "model": web_state(request).settings.default_model, **(form or {})})


@router.get("/batch-jobs")
async def batch_jobs(request: Request) -> Response:
    return _batch_page(request)


@router.post("/batch-jobs")
async def create_batch_job(request: Request, session: SessionDep) -> Response:
    form = await read_form(request, session)
    values = {k: text_field(form, k) for k in ("dataset", "model")}
    try:
        if not values["dataset"]:
            raise InputError("choose a dataset whose passages to embed")
        job = _runner(request).start_batch_embed(values["dataset"], values["model"])
    except InputError as exc:
        return _batch_page(request, 400, str(exc), values)
    return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)
