"""One job's life as the process running it sees it: the handle every job kind runs under (train, batch
embedding, the coming re-embed job).

::

    handle = JobHandle.take(store, job_id, expected)   # the server recorded it (or .claim, or .unrecorded().record)
    with handle.running(stop_reason):                  # Ctrl-C/SIGTERM -> Interrupted, an error -> Failed
        phase = handle.phase("embedding passages", total)   # the one Progress type (terminal, log, web page)
        handle.progress(step, total)                   # the record's step (at most every 2 s)
        handle.heartbeat()                             # lease renewed; False once the job is no longer ours
        handle.finish(step, summary)                   # Succeeded

Each status change is one of the store's named moves (:class:`e5studio.control.job_records.JobTable`: the
transition table says whether it is legal); this module decides when. A handle without a record (a command run
from a terminal with no job id) shows the same progress and records nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from e5studio.control.job_leases import FENCE_TERM_SHARE
from e5studio.control.job_records import (
    JOB_CANCELLED,
    JOB_OWNER_CLI,
    JOB_RUNNING,
    RESTARTED_REASON,
    RESUMED_REASON,
)
from e5studio.errors import InputError, StoreUnavailableError, Terminated
from e5studio.jobspec.progress import Phase, Progress

if TYPE_CHECKING:
    from e5studio.control.store import Store

RECORD_EVERY_S = 2.0  # the record's step at most this often (the store is shared; the terminal line is live)
FINISH_RETRY_S = 60.0  # how long the end of a job is retried while the store cannot be reached


def stop_how(exc: BaseException) -> str:
    """How a job was stopped, in the words its messages use: ``Ctrl-C`` or ``SIGTERM``."""
    return "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else "SIGTERM"


@dataclass(frozen=True)
class Expected:
    """What a process was started to do; a recorded job it is told to take over must match (in every field
    given: a process that is not told its dataset, such as ``embed-corpus``, leaves ``dataset_id`` None)."""

    kind: str
    output: str
    dataset_id: str | None
    model: str | None


@dataclass(frozen=True)
class Lease:
    """A lease this process holds on its job (a runner in the process itself): renewed by the heartbeat."""

    owner: str
    seconds: float


class JobHandle:
    """The lifecycle of one job as its process lives it: progress, heartbeat, and its end.

    ``store`` and ``job_id`` are None for a run without a record. Made by :meth:`take`, :meth:`claim` or
    :meth:`unrecorded` (then perhaps :meth:`record`); ``progress`` is where phases are shown (default: quiet).
    """

    def __init__(self, store: Store | None, job_id: str | None, progress: Progress | None = None, *,
                 lease: Lease | None = None, record_every_s: float = RECORD_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.job_id = job_id
        self.display = progress if progress is not None else Progress("job", enabled=False)
        self.lease = lease
        self.record_every_s = record_every_s
        self.clock = clock
        self._recorded_at = float("-inf")
        self._total: int | None = None
        self._renewed_at = clock()  # a lease is written when the job is claimed
        self._away = False  # the store could not be reached at the last try

    # -- how a process gets its job ------------------------------------------------------------------

    @classmethod
    def unrecorded(cls, progress: Progress | None = None) -> JobHandle:
        """A run with no record (a command from a terminal): progress only."""
        return cls(None, None, progress)

    @classmethod
    def take(cls, store: Store, job_id: str, expected: Expected, resume: bool,
             progress: Progress | None = None) -> JobHandle | None:
        """Take over the job the server recorded (``--job-id``); None when it was cancelled before this start.

        It must be a job of ``expected``'s kind, output, dataset and model; a Failed or Interrupted one runs
        again. Cancelled means "do not run" (a cancel may arrive before the process starts)."""
        job = store.get_job(job_id)
        mismatch = [name for name in ("kind", "output", "dataset_id", "model")
                    if getattr(expected, name) is not None and getattr(job, name) != getattr(expected, name)]
        if mismatch:
            named = ", ".join(name.removesuffix("_id") for name in mismatch)
            raise InputError(f"job {job_id} is not this run: its {named} differ "
                             f"(job: kind {job.kind}, output {job.output}, model {job.model})")
        if job.status != JOB_RUNNING and not store.restart_job(job_id, RESUMED_REASON if resume
                                                               else RESTARTED_REASON):
            status = store.get_job(job_id).status
            if status == JOB_CANCELLED:
                return None
            raise InputError(f"job {job_id} is {status}; only a Running, Failed or Interrupted job can be run again")
        return cls(store, job_id, progress)

    @classmethod
    def claim(cls, store: Store, lease: Lease, kinds: tuple[str, ...], *, host: str = "",
              progress: Progress | None = None) -> JobHandle | None:
        """The oldest Queued job of ``kinds`` for a runner in this process, Running under ``lease`` (which
        :meth:`heartbeat` renews); None when none waits."""
        job = store.claim_job(lease.owner, lease.seconds, runner_pid=os.getpid(), runner_host=host, kinds=kinds)
        return None if job is None else cls(store, job.id, progress, lease=lease)

    def record(self, store: Store, expected: Expected, params: Mapping[str, Any], resume: bool) -> JobHandle:
        """Record this unrecorded handle's run as a command's own job (no server), once the run can start:
        with ``resume`` the newest job for the same output continues, else a new one is recorded; this
        process is its process. A run that stops after this is recorded so (:meth:`running`)."""
        if self.job_id is not None:
            raise ValueError(f"this handle has its job already ({self.job_id})")
        previous = store.latest_job_for_output(expected.kind, expected.output) if resume else None
        if previous is not None:
            job_id = previous.id
            store.rerun_job(job_id)
        else:
            job_id = store.create_job(expected.kind, expected.model or "", expected.output, dict(params),
                                      expected.dataset_id).id
        store.set_job_process(job_id, os.getpid(), owner=JOB_OWNER_CLI, runner_id="", runner_pid=0)
        self.store, self.job_id = store, job_id
        return self

    # -- while it runs -------------------------------------------------------------------------------

    def phase(self, name: str, total: int | None, unit: str = "rows", initial: int = 0,
              scale: Callable[[float], str] | None = None) -> Phase:
        """The next phase on the job's progress (the previous one ends)."""
        return self.display.phase(name, total, unit, initial, scale)

    def write(self, message: str) -> None:
        """A line of its own on the job's output."""
        self.display.write(message)

    def progress(self, step: int, total: int | None = None, metrics: Mapping[str, Any] | None = None, *,
                 force: bool = False) -> None:
        """Record the job's step (of ``total``) and metrics: at most every ``record_every_s`` unless ``force``
        or the last step; a run without a record keeps nothing."""
        if total is not None:
            self._total = total
        now = self.clock()
        if not (force or step == self._total or now - self._recorded_at >= self.record_every_s):
            return
        self._recorded_at = now
        if self.store is not None and self.job_id is not None:
            try:
                self.store.update_job(self.job_id, step=step, total_steps=total, metrics=dict(metrics or {}))
            except StoreUnavailableError as exc:  # the job goes on; its server fences it if the store stays away
                self._store_away(exc)
                return
            self._store_back()

    def note(self, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` (merged into the job's; its step unchanged) at once; a run without a record keeps
        nothing."""
        if self.store is not None and self.job_id is not None:
            self.store.update_job(self.job_id, metrics=dict(metrics))

    def heartbeat(self) -> bool:
        """Whether the job is still this process's to run: its lease renewed (a lease-holding handle), or its
        record still Running (a cancel, or another replica taking it over, says stop).

        While the store cannot be reached: True as long as the lease renewed last could still hold (half of it
        has not passed since), then False (fenced: the job stops before another replica may take it); a handle
        without a lease goes on (its server's runner fences the process)."""
        if self.store is None or self.job_id is None:
            return True
        try:
            if self.lease is not None:
                started = self.clock()
                held = bool(self.store.renew_job_leases(self.lease.owner, [self.job_id], self.lease.seconds))
                self._renewed_at = started
            else:
                held = self.store.get_job(self.job_id).status == JOB_RUNNING
        except StoreUnavailableError as exc:
            self._store_away(exc)
            return self.lease is None or self.clock() - self._renewed_at < self.lease.seconds * FENCE_TERM_SHARE
        self._store_back()
        return held

    def _store_away(self, exc: StoreUnavailableError) -> None:
        if not self._away:
            self._away = True
            self.display.write(f"warning: the job's record cannot be updated now ({exc}); the job goes on")

    def _store_back(self) -> None:
        if self._away:
            self._away = False
            self.display.write("the job's record is updated again")

    def part(self, progress: Progress | None = None) -> JobHandle:
        """This job's handle as one part of it sees it (a knowledge-base job's batch, which runs embed-corpus's
        whole lifecycle): the same record and lease, its own progress display (default: this one's); its
        :meth:`finish` records the part's step and summary, and the job runs on (this handle ends it)."""
        return _Part(self, progress or self.display)

    # -- how it ends ---------------------------------------------------------------------------------

    def finish(self, step: int | None = None, summary: Mapping[str, Any] | None = None) -> None:
        """Succeeded, with its last step and summary metrics (a cancel that came too late does not undo it)."""
        self.display.close()
        if self.store is not None and self.job_id is not None:
            store, job_id = self.store, self.job_id
            self._retrying(lambda: store.update_job(job_id, step=step, metrics=dict(summary or {})))
            self._retrying(lambda: store.finish_job(job_id))
            self._let_go()

    def _retrying(self, write: Callable[[], object]) -> None:
        """A write of the job's end, retried for up to :data:`FINISH_RETRY_S` while the store is away (the outputs
        are complete: the record should say so); then StoreUnavailableError."""
        deadline = time.monotonic() + FINISH_RETRY_S
        while True:
            try:
                write()
                return
            except StoreUnavailableError as exc:
                if time.monotonic() > deadline:
                    raise
                self._store_away(exc)
                time.sleep(min(exc.retry_after_s, 1.0))

    def fail(self, exc: BaseException) -> None:
        """Failed (resumable) with the error, if the job is Running."""
        self.display.close()
        if self.store is not None and self.job_id is not None:
            self.store.fail_job(self.job_id, f"{type(exc).__name__}: {exc}")
            self._let_go()

    def interrupt(self, reason: str) -> None:
        """Interrupted (resumable) with ``reason``, if the job is Running: a Cancelled job stays Cancelled."""
        self.display.close()
        if self.store is not None and self.job_id is not None:
            self.store.interrupt_job(self.job_id, reason)
            self._let_go()

    def _let_go(self) -> None:
        if self.lease is not None and self.store is not None and self.job_id is not None:
            self.store.release_job_lease(self.job_id, self.lease.owner)

    @contextmanager
    def running(self, stop_reason: Callable[[str], str]) -> Iterator[JobHandle]:
        """Inside, the job is under way: Ctrl-C or SIGTERM (:class:`Terminated`) records it Interrupted with
        ``stop_reason(how)``, any other exception Failed; the exception goes on to the caller, which says how
        the command ends."""
        try:
            yield self
        except (KeyboardInterrupt, Terminated) as exc:
            self.interrupt(stop_reason(stop_how(exc)))
            raise
        except BaseException as exc:
            self.fail(exc)
            raise


class _Part(JobHandle):
    """:meth:`JobHandle.part`: a part of a job whose end is not the job's."""

    def __init__(self, whole: JobHandle, progress: Progress) -> None:
        super().__init__(whole.store, whole.job_id, progress, lease=whole.lease, record_every_s=whole.record_every_s,
                         clock=whole.clock)

    def finish(self, step: int | None = None, summary: Mapping[str, Any] | None = None) -> None:
        self.display.close()
        if step is not None:
            self.progress(step, metrics=summary, force=True)
