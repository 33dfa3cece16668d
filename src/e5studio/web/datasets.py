"""Fine-tuning datasets in the UI: list, add by a path on the server or by upload, every problem by line."""

from __future__ import annotations

import asyncio
import secrets
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData, UploadFile

from e5studio.control.store import Store
from e5studio.errors import InputError
from e5studio.jobspec.dataset_format import ValidationReport, validate_dataset
from e5studio.jobspec.layout import DATASETS_DIR, PASSAGES_FILE, TRAIN_FILE
from e5studio.jobspec.train_params import ALL_PARAMS
from e5studio.web.common import SessionDep, read_form, render, text_field, ui_session
from e5studio.web.state import web_state

router = APIRouter(prefix="/ui", dependencies=[Depends(ui_session)])
COPY_CHUNK = 1024 * 1024
DEFAULT_TRAIN_N_PASSAGES: int = ALL_PARAMS["train_n_passages"].default  # type: ignore[assignment]


def _store(request: Request) -> Store:
    store: Store = web_state(request).store
    return store


def _page(request: Request, status_code: int = 200, report: ValidationReport | None = None, error: str = "",
          shown_dir: Path | None = None, form: dict[str, str] | None = None) -> Response:
    problems: list[dict[str, Any]] = []
    if report is not None:
        for level, items in (("error", report.errors), ("warning", report.warnings)):
            for p in items:
                file = Path(p.file).name if shown_dir and Path(p.file).parent == shown_dir else p.file
                problems.append({"level": level, "file": file, "line": p.line, "message": p.message})
    return render(request, "datasets.html", status_code=status_code, datasets=_store(request).list_datasets(),
                  report=report, problems=problems, error=error, form=form or {})


@router.get("/datasets")
async def datasets(request: Request) -> Response:
    return _page(request)


def _train_n_passages(form: FormData) -> int:
    raw = text_field(form, "train_n_passages", str(DEFAULT_TRAIN_N_PASSAGES)) or str(DEFAULT_TRAIN_N_PASSAGES)
    if not raw.isdigit() or int(raw) < 1:
        raise InputError(f"train_n_passages must be a whole number of at least 1, got {raw!r}")
    return int(raw)


async def _validate_and_record(request: Request, name: str, directory: Path, description: str,
                               train_n_passages: int, shown_dir: Path | None, form: dict[str, str]) -> Response:
    report = await asyncio.to_thread(validate_dataset, directory, train_n_passages)
    if not report.ok:
        return _page(request, 400, report, f"dataset {name!r} not recorded: {len(report.errors)} errors",
                     shown_dir, form)
    dataset = _store(request).add_dataset(
        name, str(directory.resolve()), passages=report.passages, queries=report.queries,
        positives=report.positives, negatives=report.negatives, passages_sha256=report.passages_sha256,
        train_sha256=report.train_sha256, description=description)
    return RedirectResponse(f"/ui/datasets?added={dataset.id}", status_code=303)


@router.post("/datasets/path")
async def add_by_path(request: Request, session: SessionDep) -> Response:
    """Record a directory already on the server (passages.jsonl + train.jsonl)."""
    form = await read_form(request, session)
    values = {k: text_field(form, k) for k in ("name", "path", "description")}
    try:
        if not values["path"]:
            raise InputError("path is required: a directory on the server with passages.jsonl and train.jsonl")
        return await _validate_and_record(request, values["name"], Path(values["path"]).expanduser(),
                                          values["description"], _train_n_passages(form), None, values)
    except InputError as exc:
        return _page(request, 400, error=str(exc), form=values)


async def _save(upload: UploadFile, destination: Path, limit: int) -> None:
    """Copy an uploaded part (already spooled to a temporary file) to ``destination`` in chunks."""
    written = 0
    with destination.open("wb") as out:
        while chunk := await upload.read(COPY_CHUNK):
            written += len(chunk)
            if written > limit:
                raise InputError(f"{destination.name} is over the upload limit of {limit} bytes")
            out.write(chunk)


@router.post("/datasets/upload")
async def add_by_upload(request: Request, session: SessionDep) -> Response:
    """Upload passages.jsonl + train.jsonl (size-limited, streamed to disk), validate, record."""
    limit: int = web_state(request).settings.max_upload_bytes
    form = await read_form(request, session, limit=limit)
    values = {k: text_field(form, k) for k in ("name", "description")}
    data_dir: Path = web_state(request).settings.data_dir
    directory = (data_dir / DATASETS_DIR / "uploads" / secrets.token_hex(8)).resolve()
    try:
        if not values["name"]:
            raise InputError("name is required")
        parts = {PASSAGES_FILE: form.get("passages"), TRAIN_FILE: form.get("train")}
        for file_name, part in parts.items():
            if not isinstance(part, UploadFile) or not part.filename:
                raise InputError(f"choose a {file_name} file to upload")
        directory.mkdir(parents=True)
        for file_name, part in parts.items():
            assert isinstance(part, UploadFile)
            await _save(part, directory / file_name, limit)
        response = await _validate_and_record(request, values["name"], directory, values["description"],
                                              _train_n_passages(form), directory, values)
    except InputError as exc:
        response = _page(request, 400, error=str(exc), form=values)
    finally:
        await form.close()
    if response.status_code != 303:  # nothing recorded: the upload is not kept
        shutil.rmtree(directory, ignore_errors=True)
    return response
