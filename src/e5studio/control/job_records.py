"""Job records and their status transitions, for train and batch-embedding jobs alike: the one place that
says which status may follow which (:data:`TRANSITIONS`); the store refuses any other move.

::

    (created) -> Running -> Succeeded | Failed | Interrupted | Cancelled
    Failed | Interrupted | Cancelled -> Running     (resume; a `--job-id` start after a crash)
    Succeeded -> Running                            (`e5studio train --resume` of a finished run re-exports it)
    Cancelled -> Succeeded                          (a batch embedding that finished every shard before the
                                                     cancel reached it)
    any status -> itself                            (recorded again with a new reason)

Who records what is described in :mod:`e5studio.control.job_runner`.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from e5studio.control.database import Database, new_id, now
from e5studio.errors import ConflictError, InputError, NotFoundError

KIND_TRAIN = "train"
KIND_BATCH_EMBED = "batch_embed"

JOB_RUNNING = "Running"  # a process works on it (or is about to)
JOB_SUCCEEDED = "Succeeded"  # finished; its outputs are complete
JOB_FAILED = "Failed"  # stopped by an error (status_reason says which); resumable
JOB_INTERRUPTED = "Interrupted"  # stopped by Ctrl-C, a server shutdown or restart; resumable
JOB_CANCELLED = "Cancelled"  # stopped on request (recorded before the process is signalled); resumable
JOB_STATUSES = (JOB_RUNNING, JOB_SUCCEEDED, JOB_FAILED, JOB_INTERRUPTED, JOB_CANCELLED)
JOB_FINAL_STATUSES = (JOB_SUCCEEDED, JOB_FAILED, JOB_INTERRUPTED, JOB_CANCELLED)
JOB_RESUMABLE_STATUSES = (JOB_FAILED, JOB_INTERRUPTED, JOB_CANCELLED)

JOB_OWNER_SERVER = "server"  # started by the server's JobRunner (runner_id, runner_pid name that runner)
JOB_OWNER_CLI = "cli"  # started by a command (`e5studio train`) in a terminal

TRANSITIONS: dict[str, frozenset[str]] = {
    JOB_RUNNING: frozenset({JOB_SUCCEEDED, JOB_FAILED, JOB_INTERRUPTED, JOB_CANCELLED}),
    JOB_FAILED: frozenset({JOB_RUNNING}),
    JOB_INTERRUPTED: frozenset({JOB_RUNNING}),
    JOB_CANCELLED: frozenset({JOB_RUNNING, JOB_SUCCEEDED}),
    JOB_SUCCEEDED: frozenset({JOB_RUNNING}),
}

# the reasons recorded with a transition
CANCEL_REASON = "cancelled"
RESUMED_REASON = "resumed"
RESTARTED_REASON = "restarted"
_RESUME_HINT = {KIND_TRAIN: "resume continues from the last checkpoint",
                KIND_BATCH_EMBED: "resume continues after the last complete shard"}
CLI_GONE_REASON = ("the train process ended without recording a result; `e5studio train ... --resume` continues "
                   "from the last checkpoint")

JOB_HINT = (": jobs are made by `e5studio train ...` (or the web UI's Jobs and Batch jobs pages); the web UI's Jobs "
            "page lists them")


def restart_reason(kind: str) -> str:
    """The reason recorded for the Running jobs of a server that is gone (found when a server starts)."""
    return f"server restarted; {_RESUME_HINT.get(kind, 'resume continues')}"


def shutdown_reason(kind: str) -> str:
    """The reason recorded for jobs stopped by a server shutdown."""
    return f"server shut down; {_RESUME_HINT.get(kind, 'resume continues')}"


def check_status(status: str) -> None:
    if status not in JOB_STATUSES:
        raise InputError(f"unknown job status {status!r}; expected one of {', '.join(JOB_STATUSES)}")


def check_transition(current: str, status: str, job_id: str = "") -> None:
    """Raise ConflictError unless a job may go from ``current`` to ``status``."""
    if status != current and status not in TRANSITIONS.get(current, frozenset()):
        who = f"job {job_id} is {current}" if job_id else f"a {current} job"
        raise ConflictError(f"{who}; it cannot become {status}")


@dataclass(frozen=True)
class JobRecord:
    """A long-running job (kind ``train`` or ``batch_embed``): its inputs, status, progress, metrics, process.

    ``pid`` is the process working on it while one does (None otherwise); ``owner`` says who started that
    process (``server``, ``cli``, or ``""`` for jobs recorded before processes were); ``runner_id`` and
    ``runner_pid`` name the server runner that owns a ``server`` job; ``log_path`` is its combined output.
    """

    id: str
    kind: str
    dataset_id: str | None
    model: str
    output: str
    params: dict[str, Any] = field(hash=False)
    status: str = JOB_RUNNING
    status_reason: str = ""
    step: int = 0
    total_steps: int = 0
    metrics: dict[str, Any] = field(default_factory=dict, hash=False)
    created_at: str = ""
    updated_at: str = ""
    pid: int | None = None
    log_path: str = ""
    owner: str = ""
    runner_id: str = ""
    runner_pid: int = 0

    @property
    def finished(self) -> bool:
        """Whether the job is in a final status (no process should be working on it)."""
        return self.status in JOB_FINAL_STATUSES

    @property
    def progress(self) -> float:
        """Share of steps done, 0.0 to 1.0."""
        return self.step / self.total_steps if self.total_steps else 0.0


def _job(row: sqlite3.Row) -> JobRecord:
    values = {k: row[k] for k in row.keys()}  # noqa: SIM118
    values["params"] = json.loads(values["params"])
    values["metrics"] = json.loads(values["metrics"])
    return JobRecord(**values)


class JobTable(Database):
    """Job records; status changes only along :data:`TRANSITIONS`."""

    @staticmethod
    def new_job_id() -> str:
        """A fresh job id, for callers that must name the job's folders before recording it."""
        return new_id()

    def create_job(self, kind: str, model: str, output: str, params: dict[str, Any],
                   dataset_id: str | None = None, *, job_id: str | None = None, owner: str = "",
                   log_path: str = "", runner_id: str = "", runner_pid: int = 0) -> JobRecord:
        """Record a job in status Running (with ``job_id`` from :meth:`new_job_id`, or a new id)."""
        created = now()
        job = JobRecord(id=job_id or new_id(), kind=kind, dataset_id=dataset_id, model=model, output=output,
                        params=dict(params), created_at=created, updated_at=created, log_path=log_path, owner=owner,
                        runner_id=runner_id, runner_pid=runner_pid)
        with self._write() as conn:
            if dataset_id is not None and conn.execute("SELECT 1 FROM datasets WHERE id = ?",
                                                       (dataset_id,)).fetchone() is None:
                raise NotFoundError(f"dataset {dataset_id!r} not found: record one with "
                                    "`e5studio datasets add NAME DIR`")
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job.id,)).fetchone() is not None:
                raise ConflictError(f"job {job.id!r} already exists")
            conn.execute(
                "INSERT INTO jobs (id, kind, dataset_id, model, output, params, status, status_reason, step,"
                " total_steps, metrics, created_at, updated_at, pid, log_path, owner, runner_id, runner_pid)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.kind, job.dataset_id, job.model, job.output, json.dumps(job.params), job.status,
                 job.status_reason, job.step, job.total_steps, json.dumps(job.metrics), job.created_at,
                 job.updated_at, job.pid, job.log_path, job.owner, job.runner_id, job.runner_pid),
            )
        return job

    def update_job(self, job_id: str, *, status: str | None = None, status_reason: str | None = None,
                   step: int | None = None, total_steps: int | None = None,
                   metrics: dict[str, Any] | None = None) -> JobRecord:
        """Change the given fields of a job (``metrics`` is merged into the stored ones); returns the job.

        A new ``status`` must be a legal move from the current one (:data:`TRANSITIONS`)."""
        if status is not None:
            check_status(status)
        with self._write() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"job {job_id!r} not found{JOB_HINT}")
            job = _job(row)
            if status is not None:
                check_transition(job.status, status, job_id)
            merged = {**job.metrics, **(metrics or {})}
            values = (status or job.status, job.status_reason if status_reason is None else status_reason,
                      job.step if step is None else step, job.total_steps if total_steps is None else total_steps,
                      json.dumps(merged), now(), job_id)
            conn.execute("UPDATE jobs SET status = ?, status_reason = ?, step = ?, total_steps = ?, metrics = ?,"
                         " updated_at = ? WHERE id = ?", values)
            return _job(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def transition_job(self, job_id: str, from_statuses: tuple[str, ...], status: str, status_reason: str) -> bool:
        """Set ``status`` (and its reason) only if the job is now in one of ``from_statuses``; whether it was.

        The check and the change are one transaction, so two processes deciding a job's fate (a cancel
        and the job's own ending, say) never overwrite each other. Every move from ``from_statuses`` to
        ``status`` must be in :data:`TRANSITIONS` (ConflictError otherwise, before anything is read).
        """
        check_status(status)
        for current in from_statuses:
            check_transition(current, status)
        marks = ", ".join("?" for _ in from_statuses) or "NULL"
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise NotFoundError(f"job {job_id!r} not found{JOB_HINT}")
            updated = conn.execute(f"UPDATE jobs SET status = ?, status_reason = ?, updated_at = ? WHERE id = ?"
                                   f" AND status IN ({marks})", (status, status_reason, now(), job_id,
                                                                 *from_statuses))
            return updated.rowcount == 1

    def set_job_process(self, job_id: str, pid: int | None, *, owner: str | None = None,
                        runner_id: str | None = None, runner_pid: int | None = None) -> JobRecord:
        """Record the process working on a job (``pid`` None: none now); owner fields change only where given."""
        with self._write() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"job {job_id!r} not found{JOB_HINT}")
            job = _job(row)
            conn.execute("UPDATE jobs SET pid = ?, owner = ?, runner_id = ?, runner_pid = ? WHERE id = ?",
                         (pid, job.owner if owner is None else owner,
                          job.runner_id if runner_id is None else runner_id,
                          job.runner_pid if runner_pid is None else runner_pid, job_id))
            return _job(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def get_job(self, job_id: str) -> JobRecord:
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job {job_id!r} not found{JOB_HINT}")
        return _job(row)

    def list_jobs(self, kind: str | None = None, *, status: str | None = None) -> list[JobRecord]:
        """Jobs, newest first (all kinds, or one; all statuses, or one)."""
        where = [(clause, value) for clause, value in (("kind = ?", kind), ("status = ?", status)) if value is not None]
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(c for c, _ in where) if where else "")
        rows = self._read_all(sql + " ORDER BY created_at DESC, rowid DESC", tuple(v for _, v in where))
        return [_job(row) for row in rows]

    def latest_job_for_output(self, kind: str, output: str) -> JobRecord | None:
        """The newest job of ``kind`` writing to ``output`` (what ``--resume`` continues), or None."""
        rows = self._read_all("SELECT * FROM jobs WHERE kind = ? AND output = ? ORDER BY created_at DESC, rowid DESC"
                              " LIMIT 1", (kind, output))
        return _job(rows[0]) if rows else None
