"""Job records and their status transitions, for train and batch-embedding jobs alike: the one place that
says which status may follow which (:data:`TRANSITIONS`); the store refuses any other move.

::

    (created) -> Running -> Succeeded | Failed | Interrupted | Cancelled
    (created) -> Queued -> Running | Cancelled      (a server replica claims a queued job: :meth:`JobTable.claim_job`)
    Failed | Interrupted | Cancelled -> Running     (resume; a `--job-id` start after a crash)
    Succeeded -> Running                            (`e5studio train --resume` of a finished run re-exports it)
    Cancelled -> Succeeded                          (a batch embedding that finished every shard before the
                                                     cancel reached it)
    any status -> itself                            (recorded again with a new reason)

Every status change the code makes is one of :class:`JobTable`'s named moves (``finish_job``, ``fail_job``,
``interrupt_job`` ...): a job's own process makes them through its lifecycle handle
(:mod:`e5studio.jobs.lifecycle`), the server's runner for the jobs it supervises
(:mod:`e5studio.control.job_runner`, which says who records what).

Leases: the server runner working on a Running job holds its lease (``lease_owner``, ``lease_expires_at``) and
renews it while the job's process runs; a lease that expired (the replica died, or lost the store) lets any
replica mark the job Interrupted (:meth:`JobTable.expire_job_leases`), so Resume works from any replica. A job
leaving Running (or entering it by any other way than a lease) drops its lease.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from e5studio.control.database import Database, as_lookup, new_id, now
from e5studio.control.schema import datasets, jobs
from e5studio.errors import ConflictError, InputError, NotFoundError

KIND_TRAIN = "train"
KIND_BATCH_EMBED = "batch_embed"
KIND_KB = "kb"  # a knowledge base's documents embedded into a version (`e5studio kb create|reembed --job-id`)
SERVER_JOB_KINDS = (KIND_TRAIN, KIND_BATCH_EMBED, KIND_KB)  # the kinds a server's runner starts and resumes

JOB_QUEUED = "Queued"  # recorded; waits for a server replica to claim it
JOB_RUNNING = "Running"  # a process works on it (or is about to)
JOB_SUCCEEDED = "Succeeded"  # finished; its outputs are complete
JOB_FAILED = "Failed"  # stopped by an error (status_reason says which); resumable
JOB_INTERRUPTED = "Interrupted"  # stopped by Ctrl-C, a server shutdown or restart; resumable
JOB_CANCELLED = "Cancelled"  # stopped on request (recorded before the process is signalled); resumable
JOB_STATUSES = (JOB_QUEUED, JOB_RUNNING, JOB_SUCCEEDED, JOB_FAILED, JOB_INTERRUPTED, JOB_CANCELLED)
JOB_FINAL_STATUSES = (JOB_SUCCEEDED, JOB_FAILED, JOB_INTERRUPTED, JOB_CANCELLED)
JOB_RESUMABLE_STATUSES = (JOB_FAILED, JOB_INTERRUPTED, JOB_CANCELLED)

JOB_OWNER_SERVER = "server"  # started by the server's JobRunner (runner_id, runner_pid name that runner)
JOB_OWNER_CLI = "cli"  # started by a command (`e5studio train`) in a terminal

TRANSITIONS: dict[str, frozenset[str]] = {
    JOB_QUEUED: frozenset({JOB_RUNNING, JOB_CANCELLED}),
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
REASON_CHARS = 2000  # a status reason is cut to this (an exception's message can be long)
_RESUME_HINT = {KIND_TRAIN: "resume continues from the last checkpoint",
                KIND_BATCH_EMBED: "resume continues after the last complete shard",
                KIND_KB: "resume continues the version after its last complete shard"}
CLI_GONE_REASON = ("the train process ended without recording a result; `e5studio train ... --resume` continues "
                   "from the last checkpoint")

JOB_HINT = (": jobs are made by `e5studio train ...` (or the web UI's Jobs and Batch jobs pages); the web UI's Jobs "
            "page lists them")


def restart_reason(kind: str) -> str:
    """The reason recorded for the Running jobs of a server that is gone (found when a server starts)."""
    return f"server restarted; {_RESUME_HINT.get(kind, 'resume continues')}"


def lease_expired_reason(kind: str) -> str:
    """The reason recorded for a Running job whose runner stopped renewing its lease (its server is gone)."""
    return (f"the server running it stopped renewing its lease (gone or cut off from the store); "
            f"{_RESUME_HINT.get(kind, 'resume continues')}")


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
    """A long-running job (kind ``train``, ``batch_embed`` or ``kb``): its inputs, status, progress, metrics, process.

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
    lease_owner: str = ""  # the runner holding the lease of a Running server job ("" when none)
    lease_expires_at: float | None = None  # seconds since the epoch
    runner_host: str = ""  # the host of the job's process (its pid means nothing on another host)

    @property
    def finished(self) -> bool:
        """Whether the job is in a final status (no process should be working on it)."""
        return self.status in JOB_FINAL_STATUSES

    @property
    def progress(self) -> float:
        """Share of steps done, 0.0 to 1.0."""
        return self.step / self.total_steps if self.total_steps else 0.0


def _job(row: sa.RowMapping) -> JobRecord:
    values = {str(k): v for k, v in row.items()}
    values["params"] = json.loads(values["params"])
    values["metrics"] = json.loads(values["metrics"])
    return JobRecord(**values)


_J = jobs.c
_NO_LEASE: dict[str, Any] = {"lease_owner": "", "lease_expires_at": None}
_NEWEST_FIRST = (_J.created_at.desc(), _J.id.desc())


def _lease_kept_if(status: str) -> dict[str, Any]:
    """UPDATE values that keep the lease only when the job stays in ``status`` (any status change drops it)."""
    return {"lease_owner": sa.case((_J.status == status, _J.lease_owner), else_=""),
            "lease_expires_at": sa.case((_J.status == status, _J.lease_expires_at), else_=None)}


class JobTable(Database):
    """Job records; status changes only along :data:`TRANSITIONS`."""

    @staticmethod
    def new_job_id() -> str:
        """A fresh job id, for callers that must name the job's folders before recording it."""
        return new_id()

    def create_job(self, kind: str, model: str, output: str, params: dict[str, Any],
                   dataset_id: str | None = None, *, job_id: str | None = None, owner: str = "",
                   log_path: str = "", runner_id: str = "", runner_pid: int = 0, status: str = JOB_RUNNING,
                   runner_host: str = "") -> JobRecord:
        """Record a job in status Running, or Queued for a server replica to claim (:meth:`claim_job`), with
        ``job_id`` from :meth:`new_job_id`, or a new id."""
        if status not in (JOB_RUNNING, JOB_QUEUED):
            raise InputError(f"a new job is {JOB_RUNNING} or {JOB_QUEUED}, not {status!r}")
        created = now()
        job = JobRecord(id=job_id or new_id(), kind=kind, dataset_id=dataset_id, model=model, output=output,
                        params=dict(params), status=status, created_at=created, updated_at=created,
                        log_path=log_path, owner=owner, runner_id=runner_id, runner_pid=runner_pid,
                        runner_host=runner_host)
        with self._write() as conn:
            if dataset_id is not None and conn.execute(sa.select(datasets.c.id).where(datasets.c.id == dataset_id)
                                                       ).first() is None:
                raise NotFoundError(f"dataset {dataset_id!r} not found: record one with "
                                    "`e5studio datasets add NAME DIR`")
            if conn.execute(sa.select(_J.id).where(_J.id == job.id)).first() is not None:
                raise ConflictError(f"job {job.id!r} already exists")
            conn.execute(jobs.insert().values(
                id=job.id, kind=job.kind, dataset_id=job.dataset_id, model=job.model, output=job.output,
                params=json.dumps(job.params), status=job.status, status_reason=job.status_reason, step=job.step,
                total_steps=job.total_steps, metrics=json.dumps(job.metrics), created_at=job.created_at,
                updated_at=job.updated_at, pid=job.pid, log_path=job.log_path, owner=job.owner,
                runner_id=job.runner_id, runner_pid=job.runner_pid, runner_host=job.runner_host,
                lease_owner="", lease_expires_at=None))
        return job

    @staticmethod
    def _locked_job(conn: sa.Connection, job_id: str) -> JobRecord:
        row = conn.execute(sa.select(jobs).where(_J.id == job_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"job {job_id!r} not found{JOB_HINT}")
        return _job(row)

    def update_job(self, job_id: str, *, status: str | None = None, status_reason: str | None = None,
                   step: int | None = None, total_steps: int | None = None,
                   metrics: dict[str, Any] | None = None) -> JobRecord:
        """Change the given fields of a job (``metrics`` is merged into the stored ones); returns the job.

        A new ``status`` must be a legal move from the current one (:data:`TRANSITIONS`)."""
        if status is not None:
            check_status(status)
        with self._write() as conn:
            job = self._locked_job(conn, job_id)
            if status is not None:
                check_transition(job.status, status, job_id)
            merged = {**job.metrics, **(metrics or {})}
            values: dict[str, Any] = {
                "status": status or job.status,
                "status_reason": job.status_reason if status_reason is None else status_reason,
                "step": job.step if step is None else step,
                "total_steps": job.total_steps if total_steps is None else total_steps,
                "metrics": json.dumps(merged), "updated_at": now()}
            if status is not None and status != job.status:
                values.update(_NO_LEASE)
            conn.execute(jobs.update().where(_J.id == job_id).values(**values))
            return self._locked_job(conn, job_id)

    def transition_job(self, job_id: str, from_statuses: tuple[str, ...], status: str, status_reason: str, *,
                       runner_id: str | None = None) -> bool:
        """Set ``status`` (and its reason) only if the job is now in one of ``from_statuses``; whether it was.

        The check and the change are one transaction, so two processes deciding a job's fate (a cancel
        and the job's own ending, say) never overwrite each other. Every move from ``from_statuses`` to
        ``status`` must be in :data:`TRANSITIONS` (ConflictError otherwise, before anything is read).
        A change of status drops the job's lease. ``runner_id``: only if that runner still owns the job (a runner
        recording how its process ended never overwrites a run another replica took over meanwhile).
        """
        check_status(status)
        for current in from_statuses:
            check_transition(current, status)
        owned = [] if runner_id is None else [_J.runner_id == runner_id]
        with self._write() as conn:
            self._locked_job(conn, job_id)
            updated = conn.execute(
                jobs.update().where(_J.id == job_id, _J.status.in_(from_statuses), *owned)
                .values(status=status, status_reason=status_reason, updated_at=now(), **_lease_kept_if(status)))
            return updated.rowcount == 1

    # -- the named moves: every status change the code makes is one of these (``transition_job`` is their
    # primitive; the lifecycle handle of a job's process and the server's runner call these, nothing else)

    def restart_job(self, job_id: str, reason: str) -> bool:
        """A stopped job (Failed or Interrupted) runs again under the process the server started for it;
        whether it was stopped (a Cancelled one is not restarted: the cancel may have come before the start)."""
        return self.transition_job(job_id, (JOB_FAILED, JOB_INTERRUPTED), JOB_RUNNING, reason)

    def rerun_job(self, job_id: str) -> None:
        """A command's ``--resume`` takes its job over, whatever its status (a finished run exports again)."""
        self.transition_job(job_id, JOB_STATUSES, JOB_RUNNING, RESUMED_REASON)

    def finish_job(self, job_id: str) -> bool:
        """Succeeded: the job's outputs are complete, even if a cancel came too late to stop it."""
        return self.transition_job(job_id, (JOB_RUNNING, JOB_CANCELLED), JOB_SUCCEEDED, "")

    def fail_job(self, job_id: str, reason: str, *, runner_id: str | None = None) -> bool:
        """Failed (resumable) with ``reason`` (cut to :data:`REASON_CHARS`), if the job is Running (and owned by
        ``runner_id``, where given)."""
        return self.transition_job(job_id, (JOB_RUNNING,), JOB_FAILED, reason[:REASON_CHARS], runner_id=runner_id)

    def interrupt_job(self, job_id: str, reason: str) -> bool:
        """Interrupted (resumable) by Ctrl-C or SIGTERM, if the job is Running: a Cancelled job stays Cancelled
        (the cancel is recorded before the process is signalled)."""
        return self.transition_job(job_id, (JOB_RUNNING,), JOB_INTERRUPTED, reason)

    def interrupt_server_job(self, job_id: str, reason: str, *, runner_id: str | None = None) -> bool:
        """Interrupted by its server (a shutdown, a restart after a crash, a fenced job): the server's reason
        replaces the one an Interrupted job's process recorded on its way out (only if ``runner_id``, where
        given, still owns the job)."""
        return self.transition_job(job_id, (JOB_RUNNING, JOB_INTERRUPTED), JOB_INTERRUPTED, reason,
                                   runner_id=runner_id)

    def cancel_job(self, job_id: str) -> bool:
        """Cancelled on request, if the job is Running (recorded before its process is signalled)."""
        return self.transition_job(job_id, (JOB_RUNNING,), JOB_CANCELLED, CANCEL_REASON)

    def set_job_process(self, job_id: str, pid: int | None, *, owner: str | None = None,
                        runner_id: str | None = None, runner_pid: int | None = None,
                        runner_host: str | None = None) -> JobRecord:
        """Record the process working on a job (``pid`` None: none now); owner fields change only where given."""
        with self._write() as conn:
            job = self._locked_job(conn, job_id)
            conn.execute(jobs.update().where(_J.id == job_id).values(
                pid=pid, owner=job.owner if owner is None else owner,
                runner_id=job.runner_id if runner_id is None else runner_id,
                runner_pid=job.runner_pid if runner_pid is None else runner_pid,
                runner_host=job.runner_host if runner_host is None else runner_host))
            return self._locked_job(conn, job_id)

    def get_job(self, job_id: str) -> JobRecord:
        row = self._read_one(sa.select(jobs).where(_J.id == as_lookup(job_id)))
        if row is None:
            raise NotFoundError(f"job {job_id!r} not found{JOB_HINT}")
        return _job(row)

    def list_jobs(self, kind: str | None = None, *, status: str | None = None) -> list[JobRecord]:
        """Jobs, newest first (all kinds, or one; all statuses, or one)."""
        query = sa.select(jobs)
        if kind is not None:
            query = query.where(_J.kind == kind)
        if status is not None:
            query = query.where(_J.status == status)
        return [_job(row) for row in self._read_all(query.order_by(*_NEWEST_FIRST))]

    def latest_job_for_output(self, kind: str, output: str) -> JobRecord | None:
        """The newest job of ``kind`` writing to ``output`` (what ``--resume`` continues), or None."""
        rows = self._read_all(sa.select(jobs).where(_J.kind == kind, _J.output == output)
                              .order_by(*_NEWEST_FIRST).limit(1))
        return _job(rows[0]) if rows else None

    # -- leases (server replicas sharing the store) -------------------------------------------------

    def claim_job(self, owner: str, lease_s: float, *, job_id: str | None = None, runner_pid: int = 0,
                  runner_host: str = "", kinds: tuple[str, ...] | None = None,
                  now_s: float | None = None) -> JobRecord | None:
        """Take a Queued job (``job_id``, or the oldest of ``kinds``) for the runner ``owner``: it becomes Running
        with a lease of ``lease_s`` seconds; None when there is none to take.

        Exactly one runner gets each job: on PostgreSQL the row is locked with ``FOR UPDATE SKIP LOCKED``
        (runners racing each take a different job, none waits); on SQLite the write transaction is the only one.
        """
        at = time.time() if now_s is None else now_s
        query = sa.select(_J.id).where(_J.status == JOB_QUEUED)
        if job_id is not None:
            query = query.where(_J.id == job_id)
        if kinds is not None:
            query = query.where(_J.kind.in_(kinds))
        query = query.order_by(_J.created_at, _J.id).limit(1).with_for_update(skip_locked=True)
        with self._write(serial=False) as conn:
            found = conn.execute(query).first()
            if found is None:
                return None
            updated = conn.execute(jobs.update().where(_J.id == found.id, _J.status == JOB_QUEUED).values(
                status=JOB_RUNNING, status_reason="", updated_at=now(), owner=JOB_OWNER_SERVER, runner_id=owner,
                runner_pid=runner_pid, runner_host=runner_host, lease_owner=owner, lease_expires_at=at + lease_s))
            if updated.rowcount != 1:
                return None
            return self._locked_job(conn, found.id)

    def lease_job(self, job_id: str, from_statuses: tuple[str, ...], owner: str, lease_s: float, reason: str, *,
                  runner_pid: int = 0, runner_host: str = "", now_s: float | None = None) -> bool:
        """Move the job from one of ``from_statuses`` to Running with a lease of ``owner`` (a resume), in one
        transaction; whether it was in one of them."""
        for current in from_statuses:
            check_transition(current, JOB_RUNNING)
        at = time.time() if now_s is None else now_s
        with self._write() as conn:
            self._locked_job(conn, job_id)
            updated = conn.execute(jobs.update().where(_J.id == job_id, _J.status.in_(from_statuses)).values(
                status=JOB_RUNNING, status_reason=reason, updated_at=now(), owner=JOB_OWNER_SERVER, runner_id=owner,
                runner_pid=runner_pid, runner_host=runner_host, lease_owner=owner, lease_expires_at=at + lease_s))
            return updated.rowcount == 1

    def renew_job_leases(self, owner: str, job_ids: Sequence[str], lease_s: float, *,
                         now_s: float | None = None) -> list[str]:
        """Extend the leases ``owner`` holds on these Running jobs; returns the ids renewed (a job missing from
        the answer is no longer Running under this owner: cancelled, finished, or expired and taken over)."""
        if not job_ids:
            return []
        at = time.time() if now_s is None else now_s
        held = sa.and_(_J.id.in_(list(job_ids)), _J.status == JOB_RUNNING, _J.lease_owner == owner)
        with self._write(serial=False) as conn:
            conn.execute(jobs.update().where(held).values(lease_expires_at=at + lease_s))
            return [row.id for row in conn.execute(sa.select(_J.id).where(held))]

    def release_job_lease(self, job_id: str, owner: str) -> None:
        """Drop ``owner``'s lease on the job (its process ended), if it still holds it."""
        with self._write(serial=False) as conn:
            conn.execute(jobs.update().where(_J.id == job_id, _J.lease_owner == owner).values(**_NO_LEASE))

    def expire_job_leases(self, *, now_s: float | None = None) -> list[JobRecord]:
        """Mark Interrupted (resumable) every Running job whose lease expired; returns them as they were.

        On PostgreSQL the rows are locked with ``FOR UPDATE SKIP LOCKED``, so replicas expiring at the same time
        each handle a job once, and a renewal racing with the expiry either lands first (the job stays) or sees
        the job Interrupted (its runner then stops the process)."""
        at = time.time() if now_s is None else now_s
        expired_q = (sa.select(jobs).where(_J.status == JOB_RUNNING, _J.lease_owner != "",
                                           _J.lease_expires_at < at)
                     .order_by(_J.created_at).with_for_update(skip_locked=True))
        with self._write(serial=False) as conn:
            expired = [_job(row) for row in conn.execute(expired_q).mappings()]
            for job in expired:
                conn.execute(jobs.update().where(_J.id == job.id, _J.status == JOB_RUNNING).values(
                    status=JOB_INTERRUPTED, status_reason=lease_expired_reason(job.kind), updated_at=now(),
                    **_NO_LEASE))
        return expired
