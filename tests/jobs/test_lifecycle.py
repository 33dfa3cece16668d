"""The one job lifecycle: a job's process takes, records or claims its job, reports progress, keeps its lease and
ends it Succeeded, Failed or Interrupted through its handle; every move is one the store's table allows, on a
real store (SQLite file, and PostgreSQL where the suite has one)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from e5studio.control.job_records import (
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_INTERRUPTED,
    JOB_OWNER_CLI,
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    KIND_BATCH_EMBED,
    KIND_TRAIN,
    RESTARTED_REASON,
    RESUMED_REASON,
)
from e5studio.control.store import Store
from e5studio.errors import InputError, Terminated
from e5studio.jobs.lifecycle import Expected, JobHandle, Lease
from e5studio.jobspec.progress import Progress
from tests.stores import opened_store

EXPECTED = Expected(kind=KIND_TRAIN, output="/jobs/a", dataset_id=None, model="m")


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    yield from opened_store(request, tmp_path / "e5studio.db")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _server_job(store: Store, status: str = JOB_RUNNING) -> str:
    job = store.create_job(KIND_TRAIN, "m", "/jobs/a", {}, status=JOB_QUEUED if status == JOB_QUEUED else JOB_RUNNING)
    if status not in (JOB_RUNNING, JOB_QUEUED):
        assert store.transition_job(job.id, (JOB_RUNNING,), status, "set up")
    return job.id


def test_take_runs_a_running_or_stopped_job_and_not_a_cancelled_one(store: Store) -> None:
    running = _server_job(store)
    handle = JobHandle.take(store, running, EXPECTED, resume=False)
    assert handle is not None and handle.job_id == running
    for status, resume, reason in ((JOB_FAILED, False, RESTARTED_REASON), (JOB_INTERRUPTED, True, RESUMED_REASON)):
        job_id = _server_job(store, status)
        assert JobHandle.take(store, job_id, EXPECTED, resume=resume) is not None
        job = store.get_job(job_id)
        assert (job.status, job.status_reason) == (JOB_RUNNING, reason)
    cancelled = _server_job(store, JOB_CANCELLED)
    assert JobHandle.take(store, cancelled, EXPECTED, resume=True) is None
    assert store.get_job(cancelled).status == JOB_CANCELLED
    done = _server_job(store, JOB_SUCCEEDED)
    with pytest.raises(InputError, match=f"job {done} is Succeeded; only a Running, Failed or Interrupted job"):
        JobHandle.take(store, done, EXPECTED, resume=False)


def test_take_refuses_a_job_of_another_run(store: Store) -> None:
    job_id = _server_job(store)
    other = Expected(kind=KIND_BATCH_EMBED, output="/jobs/b", dataset_id=None, model="m")
    with pytest.raises(InputError, match=f"job {job_id} is not this run: its kind, output differ"):
        JobHandle.take(store, job_id, other, resume=False)
    assert store.get_job(job_id).status == JOB_RUNNING


def test_record_makes_a_command_job_or_continues_the_newest_for_its_output(store: Store) -> None:
    first = JobHandle.unrecorded().record(store, EXPECTED, {"epochs": 1}, resume=False)
    assert first.job_id is not None
    job = store.get_job(first.job_id)
    assert (job.status, job.owner, job.pid, job.params) == (JOB_RUNNING, JOB_OWNER_CLI, os.getpid(), {"epochs": 1})
    first.finish(6, {"final_dir": "/jobs/a/final"})
    again = JobHandle.unrecorded().record(store, EXPECTED, {"epochs": 1}, resume=True)
    assert again.job_id == first.job_id  # a finished run resumed runs again under its own record
    assert (store.get_job(first.job_id).status, store.get_job(first.job_id).status_reason) == (JOB_RUNNING,
                                                                                                 RESUMED_REASON)
    fresh = JobHandle.unrecorded().record(store, EXPECTED, {}, resume=False)
    assert fresh.job_id != first.job_id
    with pytest.raises(ValueError, match="has its job already"):
        fresh.record(store, EXPECTED, {}, resume=False)


def test_progress_is_recorded_at_most_every_two_seconds_and_at_the_last_step(store: Store) -> None:
    job_id = _server_job(store)
    clock = Clock()
    handle = JobHandle(store, job_id, clock=clock)
    handle.progress(0, 10, force=True)
    clock.now = 1.0
    handle.progress(3, metrics={"loss": 0.5})
    assert (store.get_job(job_id).step, store.get_job(job_id).total_steps) == (0, 10)  # too soon
    clock.now = 2.5
    handle.progress(4, metrics={"loss": 0.4})
    assert (store.get_job(job_id).step, store.get_job(job_id).metrics) == (4, {"loss": 0.4})
    clock.now = 2.6
    handle.progress(10, metrics={"loss": 0.1})  # the last step is always recorded
    assert (store.get_job(job_id).step, store.get_job(job_id).metrics) == (10, {"loss": 0.1})


def test_the_end_of_a_run_under_the_handle(store: Store) -> None:
    def reason(how: str) -> str:
        return f"interrupted ({how})"

    outcomes = {}
    for raised, name in ((KeyboardInterrupt(), "ctrl-c"), (Terminated(), "sigterm"), (RuntimeError("boom"), "error")):
        job_id = _server_job(store)
        with pytest.raises(type(raised)), JobHandle(store, job_id).running(reason):
            raise raised
        job = store.get_job(job_id)
        outcomes[name] = (job.status, job.status_reason)
    assert outcomes == {"ctrl-c": (JOB_INTERRUPTED, "interrupted (Ctrl-C)"),
                        "sigterm": (JOB_INTERRUPTED, "interrupted (SIGTERM)"),
                        "error": (JOB_FAILED, "RuntimeError: boom")}
    cancelled = _server_job(store)
    handle = JobHandle(store, cancelled)
    assert store.cancel_job(cancelled)  # the server records the cancel, then signals the process
    with pytest.raises(Terminated), handle.running(reason):
        raise Terminated()
    assert store.get_job(cancelled).status == JOB_CANCELLED  # stays Cancelled
    late = _server_job(store)
    assert store.cancel_job(late)
    JobHandle(store, late).finish(3, {"count": 3})  # finished every part before the cancel reached it
    assert (store.get_job(late).status, store.get_job(late).step, store.get_job(late).metrics) == (
        JOB_SUCCEEDED, 3, {"count": 3})


def test_a_claimed_job_keeps_its_lease_by_heartbeat_until_it_is_taken_away(store: Store) -> None:
    queued = _server_job(store, JOB_QUEUED)
    handle = JobHandle.claim(store, Lease("runner-a", 30.0), (KIND_TRAIN,), host="here")
    assert handle is not None and handle.job_id == queued
    job = store.get_job(queued)
    assert (job.status, job.lease_owner) == (JOB_RUNNING, "runner-a")
    assert JobHandle.claim(store, Lease("runner-b", 30.0), (KIND_TRAIN,)) is None  # nothing else waits
    assert handle.heartbeat()
    assert store.cancel_job(queued)  # another replica cancels it: the lease goes with the status
    assert not handle.heartbeat()
    mine = _claimed(store)
    assert mine.heartbeat()
    mine.finish(1, {})  # the lease goes with the job's end
    job = store.get_job(mine.job_id or "")
    assert (job.status, job.lease_owner) == (JOB_SUCCEEDED, "")


def _claimed(store: Store) -> JobHandle:
    _server_job(store, JOB_QUEUED)
    handle = JobHandle.claim(store, Lease("runner-a", 30.0), (KIND_TRAIN,))
    assert handle is not None
    return handle


def test_a_handle_without_a_lease_beats_while_its_record_is_running(store: Store) -> None:
    job_id = _server_job(store)
    handle = JobHandle(store, job_id)
    assert handle.heartbeat()
    assert store.cancel_job(job_id)
    assert not handle.heartbeat()
    assert JobHandle.unrecorded().heartbeat()  # nothing to lose


def test_an_unrecorded_run_shows_its_phases_and_records_nothing() -> None:
    out = io.StringIO()
    handle = JobHandle.unrecorded(Progress("embed-corpus", stream=out, interval_s=0.0))
    first = handle.phase("reading", 2)
    first.update_to(2)
    handle.phase("embedding passages", 4).update_to(1)  # the next phase ends the one before
    assert first.closed
    handle.progress(1, 4)
    with pytest.raises(KeyboardInterrupt), handle.running(lambda how: how):
        raise KeyboardInterrupt
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("embed-corpus: reading  0/2 rows")
    assert any(line.startswith("embed-corpus: embedding passages  1/4 rows  25%") for line in lines)
    assert handle.display.current is not None and handle.display.current.closed  # its last line is shown
