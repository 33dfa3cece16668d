"""A runner's job leases: renewed while its job processes run, and fenced when they cannot be.

The renewal thread renews the leases of the runner's running children every ``lease_s / 3`` seconds (at most
2 s) and stops (SIGTERM) a child whose job was cancelled or taken away by another replica meanwhile.

Fencing: each child's lease expires, as recorded in the store, at a known time (the claim or the last
renewal that succeeded, plus ``lease_s``); after that any replica may mark the job Interrupted and resume it.
So when renewals fail (the store is away, or this replica is cut off from it), a watchdog thread that never
waits on the store stops the child itself before that time: SIGTERM once half the lease has passed without a
renewal (the job stops at its next step; a train job keeps its last checkpoint), SIGKILL of its process group
at :data:`FENCE_KILL_SHARE` of the lease. A job therefore never runs on two replicas at once, also across a
network partition (given host clocks within ``lease_s * (1 - FENCE_KILL_SHARE)`` of each other). When the
store answers again the runner records the fenced job Interrupted (resumable) unless another replica has
taken it meanwhile.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING

from e5studio.control.job_records import JOB_CANCELLED, JOB_INTERRUPTED, JobRecord, lease_expired_reason
from e5studio.control.processes import signal_group
from e5studio.errors import StoreUnavailableError

if TYPE_CHECKING:
    from e5studio.control.job_runner import JobRunner

RENEW_AT_MOST_S = 2.0  # leases are renewed every lease_s / 3 seconds, at least this often
FENCE_TERM_SHARE = 0.5  # of a lease without a renewal: the job's process is asked to stop (SIGTERM)
FENCE_KILL_SHARE = 0.8  # of a lease without a renewal: its process group is killed (SIGKILL)
FENCE_TICK_S = 0.05
log = logging.getLogger("e5studio")


def fenced_reason(kind: str, seconds: float) -> str:
    """The reason recorded for a job its runner stopped because its lease could not be renewed."""
    hint = "resume continues from the last checkpoint" if kind == "train" else "resume continues"
    return (f"stopped by its server: its lease could not be renewed for {seconds:.0f} s (the control store was "
            f"unreachable), so it was stopped before another replica could take it; {hint}")


class LeaseKeeper:
    """The lease renewal and fencing threads of one runner (they run while it has live children)."""

    def __init__(self, runner: JobRunner) -> None:
        self.runner = runner
        self.stop = threading.Event()
        self.fenced: dict[str, float] = {}  # job id -> seconds without renewal when it was stopped
        self._expires: dict[str, float] = {}  # job id -> monotonic time its recorded lease expires
        self._killed: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._outage_logged = False

    def track(self, job: JobRecord) -> None:
        """A child was started for ``job`` (claimed or leased just now): its lease as recorded; the threads run
        (the caller holds the runner's lock)."""
        remaining = (job.lease_expires_at - time.time()) if job.lease_expires_at is not None else self.runner.lease_s
        self._expires[job.id] = time.monotonic() + min(remaining, self.runner.lease_s)
        self.fenced.pop(job.id, None)
        self._killed.discard(job.id)
        if not any(thread.is_alive() for thread in self._threads):
            self.stop.clear()
            name = f"e5studio-leases-{self.runner.id}"
            self._threads = [threading.Thread(target=self._renew_loop, daemon=True, name=name),
                             threading.Thread(target=self._fence_loop, daemon=True, name=name + "-fence")]
            for thread in self._threads:
                thread.start()

    def forget(self, job_id: str) -> None:
        self._expires.pop(job_id, None)
        self.fenced.pop(job_id, None)
        self._killed.discard(job_id)

    def _live(self) -> list[str]:
        with self.runner._lock:  # noqa: SLF001 - the runner's own helper
            return [job_id for job_id, child in self.runner._children.items() if child.poll() is None]  # noqa: SLF001

    # -- renewal -------------------------------------------------------------------------------------

    def _renew_loop(self) -> None:
        interval = min(self.runner.lease_s / 3, RENEW_AT_MOST_S)
        while not self.stop.is_set() and self._live():
            try:
                self.renew()
                if self._outage_logged:
                    log.warning("job leases of runner %s renewed again", self.runner.id)
                    self._outage_logged = False
            except StoreUnavailableError as exc:  # one line per outage; the fence watches the clock
                if not self._outage_logged:
                    log.warning("renewing the job leases failed: %s", exc)
                    self._outage_logged = True
            except Exception:  # a bug: say it, keep renewing
                log.exception("renewing the job leases failed")
            self.stop.wait(interval)

    def renew(self) -> list[str]:
        """Renew the leases of the runner's running children; a child whose job was cancelled or taken away
        meanwhile by another replica is stopped (SIGTERM). Returns the ids renewed."""
        runner = self.runner
        ids = [job_id for job_id in self._live() if job_id not in self.fenced]
        started, wall = time.monotonic(), time.time()
        renewed = set(runner.store.renew_job_leases(runner.id, ids, runner.lease_s, now_s=wall))
        for job_id in renewed:
            self._expires[job_id] = started + runner.lease_s
        for job_id in ids:
            if job_id in renewed or job_id in runner._signalled:  # noqa: SLF001
                continue
            job = runner.store.get_job(job_id)
            lost = job.status == JOB_INTERRUPTED and job.status_reason == lease_expired_reason(job.kind)
            if job.status == JOB_CANCELLED or lost or job.runner_id != runner.id:
                self._signal(job_id, signal.SIGTERM)
        return sorted(renewed)

    # -- fencing -------------------------------------------------------------------------------------

    def _fence_loop(self) -> None:
        lease_s = self.runner.lease_s
        while not self.stop.is_set():
            live = self._live()
            if not live:
                return
            now = time.monotonic()
            for job_id in live:
                expires = self._expires.get(job_id)
                if expires is None:
                    continue
                without = lease_s - (expires - now)  # seconds since the recorded lease was written
                if without >= lease_s * FENCE_KILL_SHARE and job_id not in self._killed:
                    self._killed.add(job_id)
                    log.warning("job %s: lease not renewed for %.1f s: its process group is killed", job_id, without)
                    self._signal(job_id, signal.SIGKILL)
                elif without >= lease_s * FENCE_TERM_SHARE and job_id not in self.fenced:
                    self.fenced[job_id] = without
                    log.warning("job %s: lease not renewed for %.1f s (lease %g s): stopping it before another "
                                "replica may take it", job_id, without, lease_s)
                    self._signal(job_id, signal.SIGTERM)
            self.stop.wait(FENCE_TICK_S)

    def _signal(self, job_id: str, sig: int) -> None:
        runner = self.runner
        with runner._lock:  # noqa: SLF001
            child = runner._children.get(job_id)  # noqa: SLF001
            if child is None or child.poll() is not None:
                return
            if sig == signal.SIGTERM and job_id in runner._signalled:  # noqa: SLF001 - a second one kills mid-exit
                return
            runner._signalled.add(job_id)  # noqa: SLF001
            signal_group(child.pid, sig)
