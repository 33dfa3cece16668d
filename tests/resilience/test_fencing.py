"""Issue 25, point 4: jobs fence themselves. Two replicas' job runners share a PostgreSQL store; replica A reaches
it through a proxy that the test makes drop every byte (a network partition between A and the store, while B
still reaches it). A's job process must stop before its lease expires, B then marks the job Interrupted and
resumes it, and the two runs never overlap (each run appends its pid and the time to a file every 20 ms, from
which the test reads when each ran). When the partition heals, A records nothing over B's run."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e5studio.control.job_leases import FENCE_KILL_SHARE
from e5studio.control.job_records import KIND_TRAIN, lease_expired_reason
from e5studio.control.job_runner import JobRunner
from e5studio.control.store import JOB_INTERRUPTED, JOB_RUNNING, Store
from e5studio.errors import StoreUnavailableError
from e5studio.settings import StoreTimeouts
from tests.control.test_job_runner import _env, register, stand_in
from tests.jobs.toy import toy_dataset
from tests.resilience.proxy import PgProxy

LEASE_S = 3.0
TIMEOUTS = StoreTimeouts(connect_s=1.0, statement_s=1.0, checkout_s=1.0)
# a job's stand-in: appends "<pid> <time>" every 20 ms to $TICKS until it is stopped
TICKER = stand_in("import os, time\n"
                  "while True:\n"
                  "    with open(os.environ['TICKS'], 'a') as f:\n"
                  "        f.write(f'{os.getpid()} {time.time()}\\n')\n"
                  "    time.sleep(0.02)\n")


def runs(ticks: Path) -> dict[int, tuple[float, float]]:
    """pid -> (first tick, last tick)."""
    found: dict[int, tuple[float, float]] = {}
    for line in ticks.read_text().splitlines():
        pid_text, _, at_text = line.partition(" ")
        if not at_text:
            continue  # a line cut by a kill
        pid, at = int(pid_text), float(at_text)
        first, last = found.get(pid, (at, at))
        found[pid] = (min(first, at), max(last, at))
    return found


@pytest.fixture
def replicas(pg_own_store_url: str, pg_proxy: PgProxy, tmp_path: Path) -> Iterator[tuple[JobRunner, JobRunner, Path]]:
    store_a = Store.open(pg_proxy.url(pg_own_store_url), timeouts=TIMEOUTS)  # A reaches the store through the proxy
    store_b = Store.open(pg_own_store_url, timeouts=TIMEOUTS)
    register(store_b, toy_dataset(tmp_path / "toy"))
    ticks = tmp_path / "ticks"
    env = {**_env(), "TICKS": str(ticks)}
    data_dir = tmp_path / "data"
    a = JobRunner(store_a, data_dir, command=TICKER, env=env, lease_s=LEASE_S, host="host-a")
    b = JobRunner(store_b, data_dir, command=TICKER, env=env, lease_s=LEASE_S, host="host-b")
    yield a, b, ticks
    pg_proxy.forward()
    for runner in (b, a):
        for child in runner._children.values():  # noqa: SLF001
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(StoreUnavailableError):
            runner.close(timeout=5)
    store_a.close()
    store_b.close()


def test_a_replica_cut_off_from_the_store_stops_its_job_before_another_may_take_it(
        replicas: tuple[JobRunner, JobRunner, Path], pg_proxy: PgProxy) -> None:
    a, b, ticks = replicas
    job = a.start_train("toy", "m", {})
    time.sleep(1.5)  # A renews its lease (every second)
    before = b.store.get_job(job.id)
    assert (before.status, before.lease_owner) == (JOB_RUNNING, a.id)
    assert before.lease_expires_at is not None
    a_pid = job.pid
    assert a_pid is not None and a_pid in runs(ticks)

    pg_proxy.hang()  # the partition: A's store calls get no answer; B's go on
    cut_at = time.time()
    deadline = time.monotonic() + LEASE_S * 4
    while b.store.get_job(job.id).status != JOB_INTERRUPTED:  # B expires the lease (once it ran out)
        assert time.monotonic() < deadline, "B never expired A's lease"
        b.poll()
        time.sleep(0.05)
    expired_at = time.time()
    interrupted = b.store.get_job(job.id)
    assert interrupted.status_reason == lease_expired_reason(KIND_TRAIN)
    resumed = b.resume(job.id)
    assert (resumed.status, resumed.runner_id, resumed.runner_host) == (JOB_RUNNING, b.id, "host-b")
    time.sleep(1.0)  # B's run ticks

    seen = runs(ticks)
    assert resumed.pid is not None and resumed.pid in seen, seen
    a_first, a_last = seen[a_pid]
    b_first, _ = seen[resumed.pid]
    assert a_last < b_first, f"the runs overlapped: A ticked until {a_last}, B from {b_first}"
    # A stopped before its lease (renewed last before the cut) could run out: SIGTERM at half of it
    assert a_last < cut_at + LEASE_S * FENCE_KILL_SHARE + 0.2, (a_last - cut_at)
    assert expired_at - cut_at > LEASE_S * 0.5  # B waited for the lease: the fence came first
    assert a._children[job.id].poll() is not None  # noqa: SLF001 - A's process is gone, not merely quiet

    pg_proxy.forward()  # the partition heals: A reaps its fenced process and records nothing over B's run
    _wait_until_reaped(a, job.id)
    after = b.store.get_job(job.id)
    assert (after.status, after.runner_id, after.lease_owner) == (JOB_RUNNING, b.id, b.id)
    assert len(runs(ticks)) == 2  # A started nothing again


def _wait_until_reaped(runner: JobRunner, job_id: str) -> None:
    """Once the store answers again, the runner reaps its fenced process within 15 s."""
    deadline = time.monotonic() + 15
    while job_id in runner._children:  # noqa: SLF001
        assert time.monotonic() < deadline, "the runner never reaped its fenced process"
        with contextlib.suppress(StoreUnavailableError):
            runner.poll()
        time.sleep(0.1)


def test_a_fenced_job_is_recorded_interrupted_when_the_store_comes_back_first(
        replicas: tuple[JobRunner, JobRunner, Path], pg_proxy: PgProxy) -> None:
    """The store comes back after the fence but before any other replica took the job: A records it Interrupted
    (resumable) with the reason, and nothing runs it until a resume."""
    a, b, ticks = replicas
    job = a.start_train("toy", "m", {})
    time.sleep(1.0)
    pg_proxy.hang()
    deadline = time.monotonic() + LEASE_S * 2
    while a._children[job.id].poll() is None:  # noqa: SLF001 - the fence stops it
        assert time.monotonic() < deadline, "A's process was not fenced"
        time.sleep(0.05)
    pg_proxy.forward()
    _wait_until_reaped(a, job.id)
    after = b.store.get_job(job.id)
    assert after.status == JOB_INTERRUPTED, after
    assert "lease could not be renewed" in after.status_reason and "checkpoint" in after.status_reason
    assert len(runs(ticks)) == 1
