"""Reading what job processes write in their folders (layout: :mod:`e5studio.jobspec.layout`): the log's
tail, a train job's curves from ``metrics.jsonl``, and the finished outputs (a train job's model, a batch
embedding's vectors). Reads only; never the store."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from e5studio.control.job_records import JOB_SUCCEEDED, KIND_BATCH_EMBED, KIND_TRAIN, JobRecord
from e5studio.jobspec.layout import FINAL_DIR, MANIFEST_FILE, METRICS_FILE, MODEL_CONFIG_FILE, VECTORS_DIR


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a text file (read from the end, never the whole file)."""
    if lines <= 0 or not path.is_file():
        return []
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        data = b""
        block = 8192
        while end > 0 and data.count(b"\n") <= lines:
            start = max(0, end - block)
            f.seek(start)
            data = f.read(end - start) + data
            end = start
            block *= 2
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]


def bucket_means(points: list[list[float]], max_points: int) -> list[list[float]]:
    """At most ``max_points`` points: consecutive buckets as [last x, mean y] (a smoothed loss curve)."""
    if max_points < 1 or len(points) <= max_points:
        return points
    size = math.ceil(len(points) / max_points)
    buckets = [points[i:i + size] for i in range(0, len(points), size)]
    return [[b[-1][0], sum(p[1] for p in b) / len(b)] for b in buckets]


def _records(job: JobRecord) -> list[dict[str, Any]]:
    path = Path(job.output) / METRICS_FILE
    out: list[dict[str, Any]] = []
    if job.kind == KIND_TRAIN and path.is_file():
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut by a crash
                    continue
                if isinstance(record, dict):
                    out.append(record)
    return out


def _ndcg_by_set(record: dict[str, Any]) -> dict[str, float]:
    sets = record.get("sets")
    if isinstance(sets, dict):
        return {str(name): float(m["ndcg@10"]) for name, m in sets.items()}
    return {"eval": float(record["ndcg@10"])}


def train_history(job: JobRecord, max_points: int = 2000) -> dict[str, Any]:
    """A train job's curves from its metrics.jsonl: ``{"loss": [[step, loss], ...], "eval": [[epoch, step,
    ndcg@10], ...], "sets": {name: [[epoch, step, ndcg@10], ...]}}`` (``eval``: the first, in-domain set;
    ``sets``: every evaluation set; empty before any record; other kinds: always empty).

    More than ``max_points`` loss points are merged into consecutive buckets ([last step, mean loss]);
    evaluations (one per epoch, plus step 0 before training) are all kept.
    """
    loss: list[list[float]] = []
    evals: list[list[float]] = []
    sets: dict[str, list[list[float]]] = {}
    for record in _records(job):
        try:
            if record.get("event") == "step":
                loss.append([int(record["step"]), float(record["loss"])])
            elif record.get("event") == "eval" and "ndcg@10" in record:
                evals.append([int(record["epoch"]), int(record["step"]), float(record["ndcg@10"])])
                for name, value in _ndcg_by_set(record).items():
                    sets.setdefault(name, []).append([int(record["epoch"]), int(record["step"]), value])
        except (ValueError, KeyError, TypeError, AttributeError):  # a damaged record
            continue
    return {"loss": bucket_means(loss, max_points), "eval": evals, "sets": sets}


def train_evaluations(job: JobRecord) -> dict[str, Any]:
    """The evaluation table of a train job: ``{"sets": [names, in-domain first], "rows": [{"label", "ndcg":
    {set: value}, "change": {set: change against the base model}}]}`` with rows for the base model, every
    epoch, every interpolation tried and the final model (empty before the first evaluation)."""
    rows: list[dict[str, Any]] = []
    base: dict[str, float] | None = None
    names: list[str] = []
    for record in _records(job):
        event = record.get("event")
        if event not in ("eval", "candidate", "final"):
            continue
        try:
            values = _ndcg_by_set(record)
            if event == "eval" and int(record["step"]) == 0:
                base, names, label = values, list(values), "base model"
            elif event == "eval":
                label = f"epoch {int(record['epoch'])}"
            elif event == "candidate":
                label = f"interpolation a = {float(record['alpha']):g}"
            else:
                label = str(record.get("label") or "final")
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        change = {n: round(v - base[n], 4) for n, v in values.items() if base is not None and n in base}
        rows.append({"label": label, "ndcg": values, "change": change, "final": event == "final"})
    return {"sets": names, "rows": rows}


def final_model_dir(job: JobRecord) -> Path | None:
    """A Succeeded train job's exported model (a local model directory endpoints can serve), else None."""
    folder = Path(job.output) / FINAL_DIR
    if job.kind == KIND_TRAIN and job.status == JOB_SUCCEEDED and (folder / MODEL_CONFIG_FILE).is_file():
        return folder
    return None


def vectors_dir(job: JobRecord) -> Path | None:
    """A Succeeded batch embedding's output (``e5studio search`` reads it), else None."""
    folder = Path(job.output) / VECTORS_DIR
    if job.kind == KIND_BATCH_EMBED and job.status == JOB_SUCCEEDED and (folder / MANIFEST_FILE).is_file():
        return folder
    return None
