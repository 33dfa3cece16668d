"""Datasets (versioned) and jobs in the control store, on real databases (an SQLite file, SQLite :memory:,
PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from e5studio.control.migrations import revisions
from e5studio.control.store import JOB_FAILED, JOB_RUNNING, JOB_SUCCEEDED, Store
from e5studio.errors import InputError, NotFoundError

COUNTS = {"passages": 10, "queries": 4, "positives": 5, "negatives": 12}


@pytest.fixture(params=["file", "memory", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    targets = {"file": lambda: tmp_path / "e5studio.db", "memory": lambda: ":memory:",
               "postgres": lambda: request.getfixturevalue("pg_store_url")}
    opened = Store(targets[request.param]())
    yield opened
    opened.close()


def _add(store: Store, name: str = "scifact", path: str = "/data/scifact", train: str = "t1", **extra: object):
    return store.add_dataset(name, path, passages_sha256="p1", train_sha256=train, **COUNTS, **extra)  # type: ignore


def test_migration_0002_is_appended_after_0001() -> None:
    assert revisions()[:2] == ["0001_projects_endpoints_keys", "0002_datasets_jobs"]


def test_datasets_get_versions_and_are_found_by_name_version_or_id(store: Store) -> None:
    first = _add(store)
    assert (first.name, first.version, first.ref, first.queries) == ("scifact", 1, "scifact@1", 4)
    assert _add(store) == first  # the same files again: no new version
    second = _add(store, path="/data/mined", train="t2", parent_id=first.id, description="mined")
    assert (second.version, second.parent_id, second.description) == (2, first.id, "mined")
    assert store.get_dataset("scifact") == second
    assert store.get_dataset("scifact@1") == first
    assert store.get_dataset(first.id) == first
    other = _add(store, name="nfcorpus")
    assert store.list_datasets() == [other, first, second]


def test_dataset_lookups_that_fail(store: Store) -> None:
    _add(store)
    with pytest.raises(NotFoundError, match="dataset 'nope' not found"):
        store.get_dataset("nope")
    with pytest.raises(NotFoundError, match="scifact@3"):
        store.get_dataset("scifact@3")
    with pytest.raises(InputError, match="must be a number"):
        store.get_dataset("scifact@x")
    with pytest.raises(InputError, match="invalid dataset name"):
        _add(store, name="bad name")
    with pytest.raises(sa.exc.IntegrityError):
        _add(store, name="x", parent_id="missing")


def test_jobs_record_status_progress_and_merged_metrics(store: Store) -> None:
    dataset = _add(store)
    job = store.create_job("train", "all-minilm-l6-v2", "/out/a", {"epochs": 1}, dataset.id)
    assert (job.status, job.step, job.total_steps, job.progress, job.params) == (JOB_RUNNING, 0, 0, 0.0, {"epochs": 1})
    store.update_job(job.id, total_steps=10)
    updated = store.update_job(job.id, step=4, metrics={"loss": 1.5})
    assert updated.progress == 0.4 and updated.metrics == {"loss": 1.5}
    done = store.update_job(job.id, status=JOB_SUCCEEDED, step=10, metrics={"ndcg@10": 0.7})
    assert done.metrics == {"loss": 1.5, "ndcg@10": 0.7} and done.status == JOB_SUCCEEDED
    assert store.get_job(job.id) == done
    later = store.create_job("train", "m", "/out/a", {})
    store.create_job("embed", "m", "/out/b", {})
    assert [j.id for j in store.list_jobs("train")] == [later.id, job.id]
    assert len(store.list_jobs()) == 3
    latest = store.latest_job_for_output("train", "/out/a")
    assert latest is not None and latest.id == later.id
    assert store.latest_job_for_output("train", "/out/zzz") is None


def test_job_errors(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.create_job("train", "m", "/o", {}, "missing-dataset")
    with pytest.raises(NotFoundError):
        store.update_job("nope", step=1)
    with pytest.raises(NotFoundError):
        store.get_job("nope")
    job = store.create_job("train", "m", "/o", {})
    with pytest.raises(InputError, match="unknown job status"):
        store.update_job(job.id, status="Done")
    assert store.update_job(job.id, status=JOB_FAILED, status_reason="boom").status_reason == "boom"


def test_datasets_survive_reopening(tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        first = _add(store)
    with Store(tmp_path / "db") as store:
        assert store.get_dataset("scifact") == first
