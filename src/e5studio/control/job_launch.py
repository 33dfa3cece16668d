"""How the server's runner starts a job's process: the checks of what the web UI and the admin API submit,
the command line of each job kind, and what a process that ended without recording a result left to say.
Pure functions of their inputs; :mod:`.job_runner` calls them."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

from e5studio.control.job_records import KIND_KB, KIND_TRAIN, REASON_CHARS, JobRecord
from e5studio.errors import ParamError
from e5studio.jobspec.batch_params import BATCH_EMBED_PARAMS
from e5studio.jobspec.layout import VECTORS_DIR, eval_files
from e5studio.jobspec.params import command_args, plain_text
from e5studio.jobspec.train_params import TRAIN_PARAMS


def check_model(model: object) -> str:
    if not isinstance(model, str) or not model.strip():
        raise ParamError("model", "must be a non-empty hub id, alias or local directory")
    return plain_text("model", model.strip())  # it becomes a process argument and is logged


def check_eval_dirs(eval_dirs: str | Sequence[str] | None) -> list[str]:
    """Evaluation sets, in order (the first in-domain): a list, or one string with a folder per line."""
    if eval_dirs is None:
        return []
    given = str(eval_dirs).splitlines() if isinstance(eval_dirs, str) else list(eval_dirs)
    out: list[str] = []
    for eval_dir in given:
        if not isinstance(eval_dir, str):
            raise ParamError("eval_dir", f"must be folder paths, got {eval_dir!r}")
        if not eval_dir.strip():
            continue
        plain_text("eval_dir", eval_dir)  # a NUL cannot be in a path; line breaks separated the folders above
        path = Path(eval_dir.strip()).expanduser().resolve()
        files = eval_files()
        missing = [name for name in files if not (path / name).is_file()]
        if missing:
            raise ParamError("eval_dir", f"{path} must hold {', '.join(files)}; missing {', '.join(missing)}")
        out.append(str(path))
    return out


def train_args(job: JobRecord, data_dir: Path, resume: bool) -> list[str]:
    """``e5studio train --job-id ...``: the process takes the recorded job over (its lifecycle handle)."""
    p = job.params
    args = ["train", "--job-id", job.id, "--dataset", str(job.dataset_id), "--model", job.model,
            "--output", job.output, "--data-dir", str(data_dir), "--no-progress"]
    args += command_args(TRAIN_PARAMS, p)
    for eval_dir in p.get("eval_dirs") or ([p["eval_dir"]] if p.get("eval_dir") else []):
        args += ["--eval-dir", str(eval_dir)]
    return [*args, "--resume"] if resume else args


def embed_args(job: JobRecord, data_dir: Path) -> list[str]:
    """``e5studio embed-corpus ... --job-id ...`` into the job folder's ``vectors``: the process takes the
    recorded job over (its lifecycle handle); rerun as is, it continues."""
    p = job.params
    args = ["embed-corpus", str(p["input"]), "--output", str(Path(job.output) / VECTORS_DIR), "--model",
            job.model, "--format", "jsonl", "--text-field", "contents", "--input-type", "passage",
            "--no-progress", "--job-id", job.id, "--data-dir", str(data_dir)]
    return args + command_args(BATCH_EMBED_PARAMS, p)


KB_ACTIONS = ("create", "reembed")
# a create job's documents, as `kb create` takes them, and how many go in one window (= one resumable shard)
KB_FLAGS = ("data", "format", "text_field", "id_field", "window_size")


def kb_args(job: JobRecord, data_dir: Path) -> list[str]:
    """``e5studio kb create|reembed NAME --job-id ...``: the process takes the recorded job over; rerun as is
    (a resume), it continues the version being built after its last complete shard."""
    p = job.params
    action = str(p["action"])
    if action not in KB_ACTIONS:
        raise ParamError("action", f"must be one of {', '.join(KB_ACTIONS)}, got {action!r}")
    args = ["kb", action, str(p["kb_name"]), "--project", str(p["project"]), "--endpoint", str(p["endpoint"]),
            "--job-id", job.id, "--data-dir", str(data_dir), "--no-progress"]
    for name in KB_FLAGS:
        if p.get(name):
            args += [f"--{name.replace('_', '-')}", plain_text(name, str(p[name]))]
    return args


def job_args(job: JobRecord, data_dir: Path, resume: bool) -> list[str]:
    """The command line of the job's process (after ``e5studio``), by its kind."""
    if job.kind == KIND_KB:
        return kb_args(job, data_dir)
    return train_args(job, data_dir, resume) if job.kind == KIND_TRAIN else embed_args(job, data_dir)


def failure_reason(log_tail: Sequence[str], code: int) -> str:
    """The reason recorded for a process that ended without recording a result: its exit status and the last
    line it logged."""
    how = f"exit code {code}"
    if code < 0:
        with suppress(ValueError):
            how = f"killed by {signal.Signals(-code).name}"
    lines = [line.strip() for line in log_tail]
    last = next((line for line in reversed(lines) if line and not line.startswith("--- ")), "")
    reason = f"the job process ended without recording a result ({how})" + (f": {last}" if last else "")
    return reason[:REASON_CHARS]
