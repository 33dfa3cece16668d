"""Train, batch-embedding and knowledge-base jobs as background processes the server starts, watches and stops.

The runner imports no ML code: each job is a child process ``python -m e5studio train --job-id ...``, ``...
embed-corpus ... --job-id ...`` or ``... kb create|reembed ... --job-id ...`` in its own process group (a Ctrl-C
meant for the server never reaches it), with stdout and stderr in ``<data_dir>/jobs/<job id>/job.log``; the job's
outputs live in the same folder.

Who records what in the control store (statuses and the legal moves between them, each a named move, in
:mod:`.job_records`; parameters in :mod:`e5studio.jobspec`; command lines in :mod:`.job_launch`; what the
processes write is read by :mod:`.job_outputs`):

- The runner records the job (Queued, claimed at once: Running) before it starts the process, and its pid.
- The process (``--job-id``) takes the job over through its lifecycle handle (:mod:`e5studio.jobs.lifecycle`,
  every job kind alike) and records its progress, its result (Succeeded, Failed with the error) and, on
  Ctrl-C or SIGTERM, Interrupted, unless the job is Cancelled already.
- :meth:`JobRunner.cancel` records Cancelled first, then sends SIGTERM: the process stops at once and
  leaves Cancelled as it is. :meth:`JobRunner.close` (server shutdown) sends SIGTERM and records the jobs
  Interrupted (resumable). Neither can be mistaken for the other.
- :meth:`JobRunner.poll` reaps ended processes and records a final status where the process did not (a
  killed process cannot): Interrupted during shutdown, else Failed with the exit status and the last log line.
- :meth:`JobRunner.recover` (server start) marks Interrupted the Running jobs of a server that is gone,
  stopping any of their processes that outlived it.

Several servers (replicas) may share one store (PostgreSQL). Each job is recorded Queued and claimed by exactly
one runner (:meth:`~.job_records.JobTable.claim_job`: the submitting one at once; any replica's :meth:`JobRunner.poll`
takes a Queued job nobody took), which holds the job's lease and renews it while the process runs (a thread,
every ``lease_s / 3`` seconds, at most 2 s), and stops the process itself when the lease could not be renewed
for half of it (fencing, :mod:`.job_leases`: a job never runs on two replicas at once, also when this one is cut
off from the store). When a replica dies its leases expire and the next :meth:`~JobRunner.poll`
of any replica marks those jobs Interrupted (stopping a process that outlived its server on the same host), so
Resume works from any replica. A cancel recorded by another replica reaches the process through the runner that
owns it (its renewal loop sees the job Cancelled and stops it). Resuming on another host needs the data
directory (job folders) on storage that both hosts share. Every stopped job resumes exactly (train: from its
newest checkpoint; batch embedding: after its last complete shard) with :meth:`JobRunner.resume`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from e5studio.control import job_outputs
from e5studio.control.database import STORE_ENV
from e5studio.control.datasets import Dataset
from e5studio.control.endpoints import Endpoint
from e5studio.control.job_launch import KB_ACTIONS, KB_FLAGS, check_eval_dirs, check_model, failure_reason, job_args
from e5studio.control.job_leases import LeaseKeeper, fenced_reason
from e5studio.control.job_records import (
    CLI_GONE_REASON,
    JOB_OWNER_CLI,
    JOB_OWNER_SERVER,
    JOB_QUEUED,
    JOB_RESUMABLE_STATUSES,
    JOB_RUNNING,
    KIND_BATCH_EMBED,
    KIND_KB,
    KIND_TRAIN,
    RESUMED_REASON,
    SERVER_JOB_KINDS,
    JobRecord,
    lease_expired_reason,
    restart_reason,
    shutdown_reason,
)
from e5studio.control.knowledge_bases import KnowledgeBase
from e5studio.control.priority import lower_priority
from e5studio.control.processes import is_job_process, runner_alive, signal_group, stop_orphan
from e5studio.control.store import Store
from e5studio.errors import ConflictError, E5StudioError, InputError, UnavailableError
from e5studio.jobspec.batch_params import BATCH_EMBED_PARAMS
from e5studio.jobspec.layout import JOBS_DIR, LOG_FILE, PASSAGES_FILE, STORE_FILE
from e5studio.jobspec.params import plain_text, validate_params
from e5studio.jobspec.train_params import TRAIN_PARAMS

_POLL_S = 0.1
DEFAULT_LEASE_S = 30.0  # a job's lease; a replica that stops renewing it loses the job this long after
log = logging.getLogger("e5studio")


# ---------------------------------------------------------------------------------------------- the runner


class JobRunner:
    """Starts, watches, cancels, resumes and stops the job processes of one server.

    ``store``: with the embedded SQLite store it must be the one at ``<data_dir>/e5studio.db`` (the job
    processes open that file); with PostgreSQL the job processes get its URL in ``$E5STUDIO_STORE``.
    ``command`` is how to run e5studio (default ``python -m e5studio`` with this interpreter); ``env`` the
    children's environment (default this process's). ``lease_s``: how long a job stays this runner's without
    a renewal (see the module). Thread-safe. Call :meth:`recover` once at start, :meth:`poll` every second
    or two, :meth:`close` at shutdown.
    """

    def __init__(self, store: Store, data_dir: Path, *, command: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None, lease_s: float = DEFAULT_LEASE_S,
                 host: str | None = None) -> None:
        self.store = store
        self.data_dir = Path(data_dir).resolve()
        database = self.data_dir / STORE_FILE
        if store.is_sqlite and (store.path == ":memory:" or Path(str(store.path)).resolve() != database):
            raise ValueError(f"the job runner needs the store at {database} (its job processes open that file); "
                             f"got {store.path}")
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        self.command = list(command) if command is not None else [sys.executable, "-m", "e5studio"]
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONUNBUFFERED"] = "1"  # log lines reach job.log as they are written
        if store.is_sqlite:  # the processes open <data dir>/e5studio.db (--data-dir), whatever the environment says
            self.env.pop(STORE_ENV, None)
        else:  # the same PostgreSQL store (in the environment: a password never shows in `ps`)
            self.env[STORE_ENV] = store.secret_url
        self.env.update(store.timeouts.as_env())  # the processes' store calls have the server's bounds
        self.id = Store.new_job_id()  # this runner, in the jobs it starts (runner_id) and their leases
        self.lease_s = float(lease_s)
        self.host = host or socket.gethostname()
        self._lock = threading.RLock()
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._signalled: set[str] = set()  # children sent SIGTERM already (a second one would kill them mid-exit)
        self._closing = False
        self._leases = LeaseKeeper(self)
        self._stop_renewing = self._leases.stop

    # -- starting ------------------------------------------------------------------------------------

    def start_train(self, dataset_ref: str, model: str, params: Mapping[str, object],
                    eval_dir: str | Sequence[str] | None = None) -> JobRecord:
        """Fine-tune ``model`` on a recorded dataset in a new job; returns it Running (pid recorded).

        ``params``: any of :data:`TRAIN_PARAMS` (others default to `e5studio train`'s defaults);
        ``eval_dir``: evaluation sets (each with passages.jsonl, queries.test.jsonl, qrels.test.tsv; a list, or
        a string with one folder per line), for nDCG@10 before training and after each epoch: the first is
        the in-domain set, the others out-of-domain. Raises :class:`ParamError` naming a bad field,
        NotFoundError for an unknown dataset.
        """
        values = validate_params(params, TRAIN_PARAMS)
        model = check_model(model)
        eval_paths = check_eval_dirs(eval_dir)
        dataset = self.store.get_dataset(dataset_ref)
        with self._lock:
            job = self._record(KIND_TRAIN, model, dataset, {"eval_dirs": eval_paths, **values})
            return self._spawn(job, job_args(job, self.data_dir, resume=False))

    def start_batch_embed(self, dataset_ref: str, model: str, params: Mapping[str, object] | None = None) -> JobRecord:
        """Embed a recorded dataset's passages.jsonl with ``model`` into ``<job dir>/vectors`` (Parquet shards,
        manifest, search index: an ``e5studio embed-corpus`` output); returns the job Running.

        Its process records the progress (passages done of the dataset's passages). ``params``: any of
        :data:`BATCH_EMBED_PARAMS`.
        """
        values = validate_params(params or {}, BATCH_EMBED_PARAMS)
        model = check_model(model)
        dataset = self.store.get_dataset(dataset_ref)
        with self._lock:
            job = self._record(KIND_BATCH_EMBED, model, dataset,
                               {"input": str(Path(dataset.path) / PASSAGES_FILE), **values})
            self.store.update_job(job.id, total_steps=dataset.passages)
            return self._spawn(job, job_args(job, self.data_dir, resume=False))

    def start_kb(self, action: str, kb: KnowledgeBase, endpoint: Endpoint, flags: Mapping[str, str]) -> JobRecord:
        """Embed a knowledge base's documents into a version (``create``: its first one from ``flags``' ``data``
        path, its ``format``, ``text_field``, ``id_field``; ``reembed``: the next one, from the current version's
        documents, with ``endpoint``'s model; both: ``window_size``) in a new job; returns it Running.

        Its process (``e5studio kb ... --job-id``) records the progress and switches the knowledge base's
        searches to the version once it is complete. ConflictError while another job builds the same one."""
        if action not in KB_ACTIONS:
            raise InputError(f"a knowledge-base job is one of {', '.join(KB_ACTIONS)}, not {action!r}")
        params = {"action": action, "kb": kb.id, "kb_name": kb.name, "project": kb.project_id,
                  "endpoint": endpoint.id, **{k: plain_text(k, v) for k, v in flags.items() if k in KB_FLAGS and v}}
        with self._lock:
            for job in self.store.list_jobs(KIND_KB):
                if job.params.get("kb") == kb.id and job.status in (JOB_QUEUED, JOB_RUNNING):
                    raise ConflictError(f"job {job.id} is building knowledge base {kb.name!r} already "
                                        f"({job.status}); wait for it or cancel it")
            job = self._record(KIND_KB, endpoint.model, None, params)
            return self._spawn(job, job_args(job, self.data_dir, resume=False))

    def _record(self, kind: str, model: str, dataset: Dataset | None, params: Mapping[str, object]) -> JobRecord:
        """A new server-owned job row in its own folder, Queued then claimed by this runner at once (Running,
        with its lease); the caller holds the lock."""
        self._check_open()
        job_id = Store.new_job_id()
        folder = self._job_dir(job_id)
        named = {"dataset": dataset.ref} if dataset is not None else {}
        self.store.create_job(kind, model, str(folder), {**named, **params}, dataset.id if dataset else None,
                              job_id=job_id, owner=JOB_OWNER_SERVER, log_path=str(folder / LOG_FILE),
                              runner_id=self.id, runner_pid=os.getpid(), status=JOB_QUEUED, runner_host=self.host)
        claimed = self.store.claim_job(self.id, self.lease_s, job_id=job_id, runner_pid=os.getpid(),
                                       runner_host=self.host)
        if claimed is None:  # another replica's poll took it in between: it runs there
            raise ConflictError(f"job {job_id} was taken by another server; it runs there")
        return claimed

    def resume(self, job_id: str) -> JobRecord:
        """Start a stopped (Interrupted, Failed or Cancelled) job of this server again where it stopped."""
        with self._lock:
            self._check_open()
            self.poll()
            job = self.store.get_job(job_id)
            if job.kind not in SERVER_JOB_KINDS:
                raise InputError(f"job {job_id} is a {job.kind} job; only {', '.join(SERVER_JOB_KINDS)} jobs "
                                 "resume here")
            if job.owner != JOB_OWNER_SERVER:
                raise InputError(f"job {job_id} was started from the command line; continue it there "
                                 "(`e5studio train ... --resume`)")
            if job.status not in JOB_RESUMABLE_STATUSES:
                raise ConflictError(f"job {job_id} is {job.status}; only Interrupted, Failed or Cancelled jobs "
                                    "can be resumed")
            if job_id in self._children or (self._local(job) and is_job_process(job)):
                raise ConflictError(f"job {job_id} is still stopping; resume it in a moment")
            if not self.store.lease_job(job_id, JOB_RESUMABLE_STATUSES, self.id, self.lease_s, RESUMED_REASON,
                                        runner_pid=os.getpid(), runner_host=self.host):
                raise ConflictError(f"job {job_id} changed status meanwhile; not resumed")
            job = self.store.get_job(job_id)
            args = job_args(job, self.data_dir, resume=True)
            return self._spawn(job, args)

    def _check_open(self) -> None:
        if self._closing:
            raise UnavailableError("the server is shutting down; no job can start now")

    def _job_dir(self, job_id: str) -> Path:
        folder = self.data_dir / JOBS_DIR / job_id
        folder.mkdir(parents=True)
        return folder

    def _local(self, job: JobRecord) -> bool:
        """Whether the job's process (if any) runs on this host: its pid means something here."""
        return job.runner_host in ("", self.host)

    def _spawn(self, job: JobRecord, args: list[str]) -> JobRecord:
        """Start the job's process (own process group, output to its log) and record its pid."""
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        Path(job.output).mkdir(parents=True, exist_ok=True)  # a job claimed from another replica's queue
        with open(job.log_path, "ab") as job_log:
            job_log.write(f"--- {stamp} e5studio {' '.join(args)}\n".encode())
            job_log.flush()
            try:
                child = subprocess.Popen([*self.command, *args], stdin=subprocess.DEVNULL, stdout=job_log,
                                         stderr=subprocess.STDOUT, env=self.env, cwd=job.output,
                                         start_new_session=True)
            except OSError as exc:
                reason = f"could not start the job process: {exc}"
                self.store.fail_job(job.id, reason)
                raise E5StudioError(f"job {job.id}: {reason}") from exc
        lower_priority(child.pid)  # below the server's event loop, level with its inference compute
        self._children[job.id] = child
        self._signalled.discard(job.id)
        self._leases.track(job)
        return self.store.set_job_process(job.id, child.pid)

    # -- leases (renewal and fencing: .job_leases) ------------------------------------------------------

    def renew(self) -> list[str]:
        """Renew the leases of this runner's running children (the renewal thread calls this); a child whose
        job was cancelled or taken away meanwhile by another replica is stopped (SIGTERM). Returns the ids
        renewed."""
        return self._leases.renew()

    # -- watching ------------------------------------------------------------------------------------

    def poll(self) -> list[JobRecord]:
        """Reap ended job processes, recording a final status where the process did not, expire the leases of
        gone replicas and start the Queued jobs nobody took; returns the jobs whose process ended since the
        last call."""
        ended: list[JobRecord] = []
        with self._lock:
            for job_id, child in list(self._children.items()):
                code = child.poll()
                if code is None:
                    continue
                ended.append(self._reap(job_id, code))  # the store away: kept, reaped at a later poll
                del self._children[job_id]
                self._signalled.discard(job_id)
                self._leases.forget(job_id)
            if not self._closing:
                self._expire_leases()
                self._claim_queued()
        return ended

    def _expire_leases(self) -> None:
        """Running jobs whose runner stopped renewing their lease become Interrupted; a process of theirs that
        outlived its server on this host is stopped (caller holds the lock)."""
        for job in self.store.expire_job_leases():
            log.warning("job %s: its lease expired (server %s on %s gone); marked Interrupted", job.id,
                        job.lease_owner, job.runner_host or "?")
            if job.id not in self._children and self._local(job) and is_job_process(job) and job.pid is not None:
                stop_orphan(job.pid, 10.0)
            if job.id not in self._children:
                self.store.set_job_process(job.id, None)

    def _claim_queued(self) -> None:
        """Start the Queued jobs nobody took (their server died between recording and starting them)."""
        while (job := self.store.claim_job(self.id, self.lease_s, runner_pid=os.getpid(), runner_host=self.host,
                                           kinds=SERVER_JOB_KINDS)) is not None:
            args = job_args(job, self.data_dir, resume=False)
            try:
                self._spawn(job, args)
            except E5StudioError:
                log.exception("job %s: could not start the claimed job", job.id)

    def _reap(self, job_id: str, code: int) -> JobRecord:
        """Record how the ended child's job ended, unless another replica took the job over meanwhile."""
        job = self.store.get_job(job_id)
        if job_id in self._leases.fenced:
            self.store.interrupt_server_job(job_id, fenced_reason(job.kind, self._leases.fenced[job_id]),
                                            runner_id=self.id)
        elif self._closing:
            self.store.interrupt_server_job(job_id, shutdown_reason(job.kind), runner_id=self.id)
        else:
            self.store.fail_job(job_id, failure_reason(self.log_tail(job.id, 20), code), runner_id=self.id)
        self.store.release_job_lease(job_id, self.id)
        return self.store.set_job_process(job_id, None)

    def wait(self, job_id: str, timeout: float) -> JobRecord:
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

    def cancel(self, job_id: str) -> JobRecord:
        """Record the Running job Cancelled, then SIGTERM its process (which stops at once and keeps
        Cancelled; a train job resumes from its last checkpoint). Returns the job; :meth:`poll` reaps it."""
        with self._lock:
            job = self.store.get_job(job_id)
            if not self.store.cancel_job(job_id):
                raise ConflictError(f"job {job_id} is {self.store.get_job(job_id).status}; only a Running job "
                                    "can be cancelled")
            child = self._children.get(job_id)
            if child is not None:
                if child.poll() is None and job_id not in self._signalled:
                    self._signalled.add(job_id)
                    signal_group(child.pid, signal.SIGTERM)
            # another live server's child is stopped by its runner (its lease renewal sees the cancel)
            elif not (job.owner == JOB_OWNER_SERVER and job.lease_owner and not self._runner_gone(job)) \
                    and self._local(job) and is_job_process(job) and job.pid is not None:
                if job.owner == JOB_OWNER_SERVER:  # a server's child: its own process group
                    signal_group(job.pid, signal.SIGTERM)
                else:
                    with suppress(ProcessLookupError, PermissionError):
                        os.kill(job.pid, signal.SIGTERM)
            return self.store.get_job(job_id)

    def close(self, timeout: float = 10.0) -> list[JobRecord]:
        """Server shutdown: SIGTERM every job process, wait up to ``timeout`` s (then SIGKILL), record each
        job Interrupted (Cancelled ones stay Cancelled, finished ones keep their result); returns them.

        No job can start afterwards. A train step under way finishes before the process notices SIGTERM,
        so give large models time; a SIGKILL loses no more than the steps since the last checkpoint.
        """
        with self._lock:
            self._closing = True
            children = [c for job_id, c in self._children.items() if c.poll() is None and job_id not in self._signalled]
            self._signalled.update(self._children)
            for child in children:
                signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_group(child.pid, signal.SIGKILL)
                child.wait()
        ended = self.poll()
        self._leases.stop.set()
        return ended

    def _runner_gone(self, job: JobRecord) -> bool:
        """Whether the server runner that owns a Running server job is gone: on this host its process tells
        at once; elsewhere only its lease (expired) does."""
        if self._local(job):
            return not runner_alive(job)
        return job.lease_expires_at is not None and job.lease_expires_at < time.time()

    def recover(self, timeout: float = 10.0) -> list[JobRecord]:
        """Server start: mark Interrupted (resumable) every Running job whose owner is gone; returns them.

        A job of a previous server (not this runner, its server process no longer running) whose process
        outlived it is stopped first (SIGTERM, SIGKILL after ``timeout`` s) so a resume never runs beside
        it. Jobs of another live server on the same data dir are left alone; a job of a server on another host
        (replicas sharing a PostgreSQL store) only once its lease expired; a command-line train job is
        marked Interrupted only once its process is gone.
        """
        recovered: list[JobRecord] = []
        with self._lock:
            for job in self.store.list_jobs(status=JOB_RUNNING):
                if job.owner == JOB_OWNER_SERVER:
                    if job.runner_id == self.id or not self._runner_gone(job):
                        continue
                    if self._local(job) and is_job_process(job) and job.pid is not None:
                        stop_orphan(job.pid, timeout)
                    reason = restart_reason(job.kind) if self._local(job) else lease_expired_reason(job.kind)
                    changed = self.store.interrupt_server_job(job.id, reason)
                elif job.owner == JOB_OWNER_CLI and job.pid is not None and self._local(job) \
                        and not is_job_process(job):
                    changed = self.store.interrupt_job(job.id, CLI_GONE_REASON)
                else:
                    continue
                if changed:
                    recovered.append(self.store.set_job_process(job.id, None))
        return recovered

    # -- reading -------------------------------------------------------------------------------------

    def log_tail(self, job_id: str, lines: int = 50) -> list[str]:
        """The last ``lines`` lines of the job's log (empty for a job without one)."""
        job = self.store.get_job(job_id)
        return job_outputs.tail(Path(job.log_path), lines) if job.log_path else []

    def history(self, job_id: str, max_points: int = 2000) -> dict[str, Any]:
        """A train job's loss and nDCG@10 curves (:func:`.job_outputs.train_history`)."""
        return job_outputs.train_history(self.store.get_job(job_id), max_points)

    def evaluations(self, job_id: str) -> dict[str, Any]:
        """A train job's nDCG@10 on every evaluation set against the base model (:func:`.job_outputs.
        train_evaluations`)."""
        return job_outputs.train_evaluations(self.store.get_job(job_id))

    @staticmethod
    def final_model_dir(job: JobRecord) -> Path | None:
        """A Succeeded train job's exported model (a local model directory endpoints can serve), else None."""
        return job_outputs.final_model_dir(job)

    @staticmethod
    def vectors_dir(job: JobRecord) -> Path | None:
        """A Succeeded batch embedding's output (``e5studio search`` reads it), else None."""
        return job_outputs.vectors_dir(job)
