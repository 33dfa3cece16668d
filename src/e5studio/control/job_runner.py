"""Train and batch-embedding jobs as background processes that the server starts, watches and stops.

The runner imports no ML code: each job is a child process ``python -m e5studio train --job-id ...`` or
``... embed-corpus ...`` in its own process group (a Ctrl-C meant for the server never reaches it), with
stdout and stderr in ``<data_dir>/jobs/<job id>/job.log``; the job's outputs live in the same folder.

Who records what in the control store (statuses in :mod:`.store`):

- The runner creates the job row (Running) before it starts the process, and records the pid.
- A train process records its own progress, its result (Succeeded, Failed with the error) and, on Ctrl-C
  or SIGTERM, Interrupted, unless the job is Cancelled already.
- :meth:`JobRunner.cancel` records Cancelled first, then sends SIGTERM: the process stops at once and
  leaves Cancelled as it is. :meth:`JobRunner.close` (server shutdown) sends SIGTERM without recording
  anything first, so the job ends Interrupted (resumable). Neither can be mistaken for the other.
- :meth:`JobRunner.poll` reaps ended processes and records a final status where the process did not
  (batch embedding never does; a killed process cannot): Succeeded for a batch embedding that exited 0,
  Interrupted during shutdown, else Failed with the exit status and the last log line.
- :meth:`JobRunner.recover` (server start) marks Interrupted the Running jobs of a server that is gone,
  stopping any of their processes that outlived it.

Every stopped job resumes exactly (train: from its newest checkpoint; batch embedding: after its last
complete shard) with :meth:`JobRunner.resume`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from e5studio.control.store import (
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_INTERRUPTED,
    JOB_OWNER_CLI,
    JOB_OWNER_SERVER,
    JOB_RESUMABLE_STATUSES,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    Dataset,
    Job,
    Store,
)
from e5studio.errors import ConflictError, E5StudioError, InputError, UnavailableError

KIND_TRAIN = "train"
KIND_BATCH_EMBED = "batch_embed"
JOBS_DIR = "jobs"  # under the data dir: one folder per job, named by its id
LOG_FILE = "job.log"
METRICS_FILE = "metrics.jsonl"  # what a train job writes (jobs/train/report.py)
FINAL_DIR = "final"  # a train job's exported model (Hugging Face layout, loadable as a local model)
VECTORS_DIR = "vectors"  # a batch-embedding job's embed-corpus output
MANIFEST_FILE = "manifest.json"  # embed-corpus's record of what is done
EVAL_FILES = ("passages.jsonl", "queries.test.jsonl", "qrels.test.tsv")

CANCEL_REASON = "cancelled"
_RESUME_HINT = {KIND_TRAIN: "resume continues from the last checkpoint",
                KIND_BATCH_EMBED: "resume continues after the last complete shard"}
_CLI_GONE_REASON = ("the train process ended without recording a result; `e5studio train ... --resume` continues "
                    "from the last checkpoint")
_POLL_S = 0.1
_REASON_CHARS = 2000


def restart_reason(kind: str) -> str:
    """The reason :meth:`JobRunner.recover` records for the jobs of a server that is gone."""
    return f"server restarted; {_RESUME_HINT.get(kind, 'resume continues')}"


def shutdown_reason(kind: str) -> str:
    """The reason recorded for jobs stopped by :meth:`JobRunner.close`."""
    return f"server shut down; {_RESUME_HINT.get(kind, 'resume continues')}"


# ---------------------------------------------------------------------------------------------- parameters


class ParamError(InputError):
    """A job parameter is unknown or out of range; ``field`` names it (for the form field to mark)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class _Param:
    flag: str
    type: type  # int or float
    default: int | float | None
    rule: str  # what a valid value is, in words
    valid: Callable[[float], bool]


# The train command's hyperparameters the UI may set, with `e5studio train`'s defaults (a test checks they match).
TRAIN_PARAMS: dict[str, _Param] = {
    "epochs": _Param("--epochs", int, 3, "an integer >= 1", lambda v: v >= 1),
    "batch_size": _Param("--batch-size", int, 32, "an integer >= 1", lambda v: v >= 1),
    "train_n_passages": _Param("--train-n-passages", int, 8, "an integer >= 1", lambda v: v >= 1),
    "lr": _Param("--lr", float, 2e-5, "a number > 0", lambda v: v > 0),
    "temperature": _Param("--temperature", float, 0.01, "a number > 0", lambda v: v > 0),
    "warmup_ratio": _Param("--warmup-ratio", float, 0.1, "a number >= 0 and < 1", lambda v: 0 <= v < 1),
    "query_max_length": _Param("--query-max-length", int, 64, "an integer >= 2", lambda v: v >= 2),
    "passage_max_length": _Param("--passage-max-length", int, 256, "an integer >= 2", lambda v: v >= 2),
    "seed": _Param("--seed", int, 42, "an integer from 0 to 2**32 - 1", lambda v: 0 <= v < 2**32),
    "save_every": _Param("--save-every", int, 500, "an integer >= 0 (0: checkpoints at epoch ends only)",
                         lambda v: v >= 0),
    "threads": _Param("--threads", int, None, "an integer >= 1 (empty: one per core)", lambda v: v >= 1),
}

# embed-corpus settings the UI may set (defaults: embed-corpus's own).
BATCH_EMBED_PARAMS: dict[str, _Param] = {
    "window_size": _Param("--window-size", int, 10_000, "an integer >= 1 (input lines per shard)", lambda v: v >= 1),
    "threads": _Param("--threads", int, None, "an integer >= 1 (empty: one per core)", lambda v: v >= 1),
    "workers": _Param("--workers", int, None, "an integer >= 1 (empty: one per core on CPU)", lambda v: v >= 1),
}


def train_param_defaults() -> dict[str, int | float | None]:
    """The train parameters and their defaults (None: the command's own choice), e.g. to prefill a form."""
    return {name: spec.default for name, spec in TRAIN_PARAMS.items()}


def validate_params(params: Mapping[str, object], specs: Mapping[str, _Param]) -> dict[str, int | float | None]:
    """Every parameter of ``specs`` with its checked value (given or default); raises :class:`ParamError`.

    Numbers may come as strings (form fields); ``None`` or an empty string means the default.
    """
    unknown = sorted(set(params) - set(specs))
    if unknown:
        raise ParamError(unknown[0], f"unknown parameter; known: {', '.join(specs)}")
    return {name: _coerce(name, spec, params.get(name)) for name, spec in specs.items()}


def _coerce(name: str, spec: _Param, value: object) -> int | float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return spec.default
    number: int | float | None = None
    if isinstance(value, bool):
        number = None
    elif spec.type is int:
        if isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str):
            with suppress(ValueError):
                number = int(value.strip())
    else:
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            with suppress(ValueError):
                number = float(value.strip())
        if number is not None and not math.isfinite(number):
            number = None
    if number is None or not spec.valid(number):
        raise ParamError(name, f"must be {spec.rule}, got {value!r}")
    return number


def _check_model(model: object) -> str:
    if not isinstance(model, str) or not model.strip():
        raise ParamError("model", "must be a non-empty hub id, alias or local directory")
    return model.strip()


def _check_eval_dir(eval_dir: str | None) -> str | None:
    if eval_dir is None or not str(eval_dir).strip():
        return None
    path = Path(eval_dir).expanduser().resolve()
    missing = [name for name in EVAL_FILES if not (path / name).is_file()]
    if missing:
        raise ParamError("eval_dir", f"{path} must hold {', '.join(EVAL_FILES)}; missing {', '.join(missing)}")
    return str(path)


# ---------------------------------------------------------------------------------------------- processes


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (not Linux): trust kill(0)
        return True
    return state not in ("Z", "X")


def _cmdline(pid: int) -> bytes | None:
    """The command line of ``pid`` (arguments joined by NUL), None where /proc cannot tell."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _is_job_process(job: Job) -> bool:
    """Whether ``job.pid`` is alive and is that job's process (a reused pid is not)."""
    if job.pid is None or not _pid_alive(job.pid):
        return False
    command = _cmdline(job.pid)
    if command is None:
        return not Path("/proc").is_dir()  # no /proc: trust the pid; a vanished entry: gone
    if job.owner == JOB_OWNER_SERVER:  # the job id is in its arguments (--job-id, or the output path)
        return job.id.encode() in command
    return b"e5studio" in command and b"train" in command


def _runner_alive(job: Job) -> bool:
    """Whether the server process that owns ``job`` is still running (another server on the same data dir)."""
    return job.runner_pid > 0 and job.runner_pid != os.getpid() and _pid_alive(job.runner_pid)


def _signal_group(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _tail(path: Path, lines: int) -> list[str]:
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


def _bucket_means(points: list[list[float]], max_points: int) -> list[list[float]]:
    """At most ``max_points`` points: consecutive buckets as [last x, mean y] (a smoothed loss curve)."""
    if max_points < 1 or len(points) <= max_points:
        return points
    size = math.ceil(len(points) / max_points)
    buckets = [points[i:i + size] for i in range(0, len(points), size)]
    return [[b[-1][0], sum(p[1] for p in b) / len(b)] for b in buckets]


# ---------------------------------------------------------------------------------------------- the runner


class JobRunner:
    """Starts, watches, cancels, resumes and stops the job processes of one server.

    ``store`` must be the store at ``<data_dir>/e5studio.db`` (the job processes open the same file).
    ``command`` is how to run e5studio (default ``python -m e5studio`` with this interpreter); ``env`` the
    children's environment (default this process's). Thread-safe. Call :meth:`recover` once at start,
    :meth:`poll` every second or two, :meth:`close` at shutdown.
    """

    def __init__(self, store: Store, data_dir: Path, *, command: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.store = store
        self.data_dir = Path(data_dir).resolve()
        database = self.data_dir / "e5studio.db"
        if store.path == ":memory:" or Path(store.path).resolve() != database:
            raise ValueError(f"the job runner needs the store at {database} (its job processes open that file); "
                             f"got {store.path}")
        self.command = list(command) if command is not None else [sys.executable, "-m", "e5studio"]
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONUNBUFFERED"] = "1"  # log lines reach job.log as they are written
        self.id = Store.new_job_id()  # this runner, in the jobs it starts (runner_id)
        self._lock = threading.RLock()
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._closing = False

    # -- starting ------------------------------------------------------------------------------------

    def start_train(self, dataset_ref: str, model: str, params: Mapping[str, object],
                    eval_dir: str | None = None) -> Job:
        """Fine-tune ``model`` on a recorded dataset in a new job; returns it Running (pid recorded).

        ``params``: any of :data:`TRAIN_PARAMS` (others default to `e5studio train`'s defaults);
        ``eval_dir``: an evaluation set (passages.jsonl, queries.test.jsonl, qrels.test.tsv) for nDCG@10
        before training and after each epoch. Raises :class:`ParamError` naming a bad field,
        NotFoundError for an unknown dataset.
        """
        values = validate_params(params, TRAIN_PARAMS)
        model = _check_model(model)
        eval_path = _check_eval_dir(eval_dir)
        dataset = self.store.get_dataset(dataset_ref)
        with self._lock:
            job = self._record(KIND_TRAIN, model, dataset, {"eval_dir": eval_path, **values})
            return self._spawn(job, self._train_args(job, resume=False))

    def start_batch_embed(self, dataset_ref: str, model: str, params: Mapping[str, object] | None = None) -> Job:
        """Embed a recorded dataset's passages.jsonl with ``model`` into ``<job dir>/vectors`` (Parquet shards,
        manifest, search index: an ``e5studio embed-corpus`` output); returns the job Running.

        Progress (passages done of the dataset's passages) is refreshed by :meth:`poll`. ``params``: any of
        :data:`BATCH_EMBED_PARAMS`.
        """
        values = validate_params(params or {}, BATCH_EMBED_PARAMS)
        model = _check_model(model)
        dataset = self.store.get_dataset(dataset_ref)
        with self._lock:
            job = self._record(KIND_BATCH_EMBED, model, dataset,
                               {"input": str(Path(dataset.path) / "passages.jsonl"), **values})
            self.store.update_job(job.id, total_steps=dataset.passages)
            return self._spawn(job, self._embed_args(job))

    def _record(self, kind: str, model: str, dataset: Dataset, params: Mapping[str, object]) -> Job:
        """A new server-owned job row in its own folder (caller holds the lock)."""
        self._check_open()
        job_id = Store.new_job_id()
        folder = self._job_dir(job_id)
        return self.store.create_job(kind, model, str(folder), {"dataset": dataset.ref, **params}, dataset.id,
                                     job_id=job_id, owner=JOB_OWNER_SERVER, log_path=str(folder / LOG_FILE),
                                     runner_id=self.id, runner_pid=os.getpid())

    def resume(self, job_id: str) -> Job:
        """Start a stopped (Interrupted, Failed or Cancelled) job of this server again where it stopped."""
        with self._lock:
            self._check_open()
            self.poll()
            job = self.store.get_job(job_id)
            if job.kind not in (KIND_TRAIN, KIND_BATCH_EMBED):
                raise InputError(f"job {job_id} is a {job.kind} job; only train and batch_embed jobs resume here")
            if job.owner != JOB_OWNER_SERVER:
                raise InputError(f"job {job_id} was started from the command line; continue it there "
                                 "(`e5studio train ... --resume`)")
            if job.status not in JOB_RESUMABLE_STATUSES:
                raise ConflictError(f"job {job_id} is {job.status}; only Interrupted, Failed or Cancelled jobs "
                                    "can be resumed")
            if job_id in self._children or _is_job_process(job):
                raise ConflictError(f"job {job_id} is still stopping; resume it in a moment")
            self.store.set_job_process(job_id, None, owner=JOB_OWNER_SERVER, runner_id=self.id,
                                       runner_pid=os.getpid())
            if not self.store.transition_job(job_id, JOB_RESUMABLE_STATUSES, JOB_RUNNING, "resumed"):
                raise ConflictError(f"job {job_id} changed status meanwhile; not resumed")
            job = self.store.get_job(job_id)
            args = self._train_args(job, resume=True) if job.kind == KIND_TRAIN else self._embed_args(job)
            return self._spawn(job, args)

    def _check_open(self) -> None:
        if self._closing:
            raise UnavailableError("the server is shutting down; no job can start now")

    def _job_dir(self, job_id: str) -> Path:
        folder = self.data_dir / JOBS_DIR / job_id
        folder.mkdir(parents=True)
        return folder

    def _train_args(self, job: Job, resume: bool) -> list[str]:
        p = job.params
        args = ["train", "--job-id", job.id, "--dataset", str(job.dataset_id), "--model", job.model,
                "--output", job.output, "--data-dir", str(self.data_dir), "--no-progress"]
        for name, spec in TRAIN_PARAMS.items():
            if p.get(name) is not None:
                args += [spec.flag, str(p[name])]
        if p.get("eval_dir"):
            args += ["--eval-dir", str(p["eval_dir"])]
        return [*args, "--resume"] if resume else args

    def _embed_args(self, job: Job) -> list[str]:
        p = job.params
        args = ["embed-corpus", str(p["input"]), "--output", str(Path(job.output) / VECTORS_DIR), "--model",
                job.model, "--format", "jsonl", "--text-field", "contents", "--input-type", "passage",
                "--no-progress"]
        for name, spec in BATCH_EMBED_PARAMS.items():
            if p.get(name) is not None:
                args += [spec.flag, str(p[name])]
        return args

    def _spawn(self, job: Job, args: list[str]) -> Job:
        """Start the job's process (own process group, output to its log) and record its pid."""
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with open(job.log_path, "ab") as log:
            log.write(f"--- {stamp} e5studio {' '.join(args)}\n".encode())
            log.flush()
            try:
                child = subprocess.Popen([*self.command, *args], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env, cwd=job.output,
                                         start_new_session=True)
            except OSError as exc:
                reason = f"could not start the job process: {exc}"
                self.store.transition_job(job.id, (JOB_RUNNING,), JOB_FAILED, reason)
                raise E5StudioError(f"job {job.id}: {reason}") from exc
        self._children[job.id] = child
        return self.store.set_job_process(job.id, child.pid)

    # -- watching ------------------------------------------------------------------------------------

    def poll(self) -> list[Job]:
        """Reap ended job processes, recording a final status where the process did not, and refresh the
        progress of batch embeddings; returns the jobs whose process ended since the last call."""
        ended: list[Job] = []
        with self._lock:
            for job_id, child in list(self._children.items()):
                code = child.poll()
                if code is None:
                    job = self.store.get_job(job_id)
                    if job.kind == KIND_BATCH_EMBED:
                        self._embed_progress(job)
                    continue
                del self._children[job_id]
                ended.append(self._reap(job_id, code))
        return ended

    def _reap(self, job_id: str, code: int) -> Job:
        job = self.store.get_job(job_id)
        if job.kind == KIND_BATCH_EMBED:
            self._embed_progress(job)
            if code == 0:  # embed-corpus finished every shard: done, even if a cancel came too late
                self.store.transition_job(job_id, (JOB_RUNNING, JOB_CANCELLED), JOB_SUCCEEDED, "")
        if self._closing:
            self.store.transition_job(job_id, (JOB_RUNNING, JOB_INTERRUPTED), JOB_INTERRUPTED,
                                      shutdown_reason(job.kind))
        else:
            self.store.transition_job(job_id, (JOB_RUNNING,), JOB_FAILED, self._failure_reason(job, code))
        return self.store.set_job_process(job_id, None)

    def _failure_reason(self, job: Job, code: int) -> str:
        how = f"exit code {code}"
        if code < 0:
            with suppress(ValueError):
                how = f"killed by {signal.Signals(-code).name}"
        lines = [line.strip() for line in self.log_tail(job.id, 20)]
        last = next((line for line in reversed(lines) if line and not line.startswith("--- ")), "")
        reason = f"the job process ended without recording a result ({how})" + (f": {last}" if last else "")
        return reason[:_REASON_CHARS]

    def _embed_progress(self, job: Job) -> None:
        """Passages done (embedded or rejected) from embed-corpus's manifest; its summary once complete."""
        try:
            manifest = json.loads((Path(job.output) / VECTORS_DIR / MANIFEST_FILE).read_text(encoding="utf-8"))
            done = int(manifest["count"]) + int(manifest["rejects"]["count"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        if manifest.get("status") == "complete":
            self.store.update_job(job.id, step=done, metrics={
                "count": manifest["count"], "rejects": manifest["rejects"]["count"], "dim": manifest.get("dim"),
                "vectors": str(Path(job.output) / VECTORS_DIR)})
        elif done != job.step:
            self.store.update_job(job.id, step=done)

    def wait(self, job_id: str, timeout: float) -> Job:
        """Poll until the job is in a final status with no process of this runner left; TimeoutError after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            job = self.store.get_job(job_id)
            with self._lock:
                ours = job_id in self._children
            if job.finished and not ours:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout:.0f}s")
            time.sleep(_POLL_S)

    # -- stopping ------------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> Job:
        """Record the Running job Cancelled, then SIGTERM its process (which stops at once and keeps
        Cancelled; a train job resumes from its last checkpoint). Returns the job; :meth:`poll` reaps it."""
        with self._lock:
            job = self.store.get_job(job_id)
            if not self.store.transition_job(job_id, (JOB_RUNNING,), JOB_CANCELLED, CANCEL_REASON):
                raise ConflictError(f"job {job_id} is {self.store.get_job(job_id).status}; only a Running job "
                                    "can be cancelled")
            child = self._children.get(job_id)
            if child is not None:
                if child.poll() is None:
                    _signal_group(child.pid, signal.SIGTERM)
            elif _is_job_process(job) and job.pid is not None:
                if job.owner == JOB_OWNER_SERVER:  # another server's child: its own process group
                    _signal_group(job.pid, signal.SIGTERM)
                else:
                    with suppress(ProcessLookupError, PermissionError):
                        os.kill(job.pid, signal.SIGTERM)
            return self.store.get_job(job_id)

    def close(self, timeout: float = 10.0) -> list[Job]:
        """Server shutdown: SIGTERM every job process, wait up to ``timeout`` s (then SIGKILL), record each
        job Interrupted (Cancelled ones stay Cancelled, finished ones keep their result); returns them.

        No job can start afterwards. A train step under way finishes before the process notices SIGTERM,
        so give large models time; a SIGKILL loses no more than the steps since the last checkpoint.
        """
        with self._lock:
            self._closing = True
            children = [c for c in self._children.values() if c.poll() is None]
            for child in children:
                _signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.pid, signal.SIGKILL)
                child.wait()
        return self.poll()

    def recover(self, timeout: float = 10.0) -> list[Job]:
        """Server start: mark Interrupted (resumable) every Running job whose owner is gone; returns them.

        A job of a previous server (not this runner, its server process no longer running) whose process
        outlived it is stopped first (SIGTERM, SIGKILL after ``timeout`` s) so a resume never runs beside
        it. Jobs of another live server on the same data dir are left alone; a command-line train job is
        marked Interrupted only once its process is gone.
        """
        recovered: list[Job] = []
        with self._lock:
            for job in self.store.list_jobs(status=JOB_RUNNING):
                if job.owner == JOB_OWNER_SERVER:
                    if job.runner_id == self.id or _runner_alive(job):
                        continue
                    if _is_job_process(job) and job.pid is not None:
                        self._stop_orphan(job.pid, timeout)
                    changed = self.store.transition_job(job.id, (JOB_RUNNING, JOB_INTERRUPTED), JOB_INTERRUPTED,
                                                         restart_reason(job.kind))
                elif job.owner == JOB_OWNER_CLI and job.pid is not None and not _is_job_process(job):
                    changed = self.store.transition_job(job.id, (JOB_RUNNING,), JOB_INTERRUPTED, _CLI_GONE_REASON)
                else:
                    continue
                if changed:
                    recovered.append(self.store.set_job_process(job.id, None))
        return recovered

    @staticmethod
    def _stop_orphan(pid: int, timeout: float) -> None:
        """SIGTERM a job process that is not our child (its group: it leads one), SIGKILL after ``timeout``."""
        for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            _signal_group(pid, sig)
            deadline = time.monotonic() + wait_s
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(_POLL_S)
            if not _pid_alive(pid):
                return

    # -- reading -------------------------------------------------------------------------------------

    def log_tail(self, job_id: str, lines: int = 50) -> list[str]:
        """The last ``lines`` lines of the job's log (empty for a job without one)."""
        job = self.store.get_job(job_id)
        return _tail(Path(job.log_path), lines) if job.log_path else []

    def history(self, job_id: str, max_points: int = 2000) -> dict[str, list[list[float]]]:
        """A train job's curves from its metrics.jsonl: ``{"loss": [[step, loss], ...], "eval": [[epoch, step,
        ndcg@10], ...]}`` (empty lists before any record; other kinds: always empty).

        More than ``max_points`` loss points are merged into consecutive buckets ([last step, mean loss]);
        evaluations (one per epoch, plus step 0 before training) are all kept.
        """
        job = self.store.get_job(job_id)
        loss: list[list[float]] = []
        evals: list[list[float]] = []
        path = Path(job.output) / METRICS_FILE
        if job.kind == KIND_TRAIN and path.is_file():
            with path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        record: dict[str, Any] = json.loads(line)
                        if record.get("event") == "step":
                            loss.append([int(record["step"]), float(record["loss"])])
                        elif record.get("event") == "eval" and "ndcg@10" in record:
                            evals.append([int(record["epoch"]), int(record["step"]), float(record["ndcg@10"])])
                    except (ValueError, KeyError, TypeError, AttributeError):  # a line cut by a crash
                        continue
        return {"loss": _bucket_means(loss, max_points), "eval": evals}

    @staticmethod
    def final_model_dir(job: Job) -> Path | None:
        """A Succeeded train job's exported model (a local model directory endpoints can serve), else None."""
        folder = Path(job.output) / FINAL_DIR
        if job.kind == KIND_TRAIN and job.status == JOB_SUCCEEDED and (folder / "config.json").is_file():
            return folder
        return None

    @staticmethod
    def vectors_dir(job: Job) -> Path | None:
        """A Succeeded batch embedding's output (``e5studio search`` reads it), else None."""
        folder = Path(job.output) / VECTORS_DIR
        if job.kind == KIND_BATCH_EMBED and job.status == JOB_SUCCEEDED and (folder / MANIFEST_FILE).is_file():
            return folder
        return None
