"""The job status transition table: the store moves a job only along it, for train and batch jobs alike."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from e5studio.control.job_records import (
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_INTERRUPTED,
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_STATUSES,
    JOB_SUCCEEDED,
    KIND_BATCH_EMBED,
    KIND_TRAIN,
    TRANSITIONS,
    check_transition,
)
from e5studio.control.store import Store
from e5studio.errors import ConflictError, InputError
from tests.stores import opened_store

LEGAL = {
    (JOB_QUEUED, JOB_RUNNING), (JOB_QUEUED, JOB_CANCELLED),
    (JOB_RUNNING, JOB_SUCCEEDED), (JOB_RUNNING, JOB_FAILED), (JOB_RUNNING, JOB_INTERRUPTED),
    (JOB_RUNNING, JOB_CANCELLED), (JOB_FAILED, JOB_RUNNING), (JOB_INTERRUPTED, JOB_RUNNING),
    (JOB_CANCELLED, JOB_RUNNING), (JOB_CANCELLED, JOB_SUCCEEDED), (JOB_SUCCEEDED, JOB_RUNNING),
}


@pytest.fixture(scope="module", params=["memory", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """One store per database for the module (each test makes jobs of its own)."""
    yield from opened_store(request, ":memory:")


def _job_in(store: Store, kind: str, status: str) -> str:
    """A job brought to ``status`` along legal moves only."""
    if status == JOB_QUEUED:
        return store.create_job(kind, "m", "/o", {}, status=JOB_QUEUED).id
    job = store.create_job(kind, "m", "/o", {})
    if status != JOB_RUNNING:
        assert store.transition_job(job.id, (JOB_RUNNING,), status, "set up")
    return job.id


def test_the_table_is_the_documented_one() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == LEGAL


@pytest.mark.parametrize("kind", [KIND_TRAIN, KIND_BATCH_EMBED])
@pytest.mark.parametrize(("current", "new"), list(itertools.product(JOB_STATUSES, JOB_STATUSES)))
def test_every_move_is_allowed_or_refused_by_the_table(store: Store, kind: str, current: str, new: str) -> None:
    job_id = _job_in(store, kind, current)
    if current == new or (current, new) in LEGAL:
        check_transition(current, new)
        assert store.transition_job(job_id, (current,), new, "why")
        assert (store.get_job(job_id).status, store.get_job(job_id).status_reason) == (new, "why")
        job_id = _job_in(store, kind, current)
        assert store.update_job(job_id, status=new).status == new
    else:
        with pytest.raises(ConflictError, match=f"cannot become {new}"):
            check_transition(current, new)
        with pytest.raises(ConflictError, match=f"cannot become {new}"):
            store.transition_job(job_id, (current,), new, "why")
        with pytest.raises(ConflictError, match=f"job {job_id} is {current}; it cannot become {new}"):
            store.update_job(job_id, status=new)
        assert store.get_job(job_id).status == current  # nothing changed


def test_a_transition_from_another_status_changes_nothing(store: Store) -> None:
    job_id = _job_in(store, KIND_TRAIN, JOB_CANCELLED)
    assert not store.transition_job(job_id, (JOB_RUNNING,), JOB_INTERRUPTED, "late")  # a cancel won the race
    assert store.get_job(job_id).status == JOB_CANCELLED


def test_unknown_statuses_are_refused(store: Store) -> None:
    job_id = _job_in(store, KIND_TRAIN, JOB_RUNNING)
    with pytest.raises(InputError, match="unknown job status 'Done'"):
        store.transition_job(job_id, (JOB_RUNNING,), "Done", "")
