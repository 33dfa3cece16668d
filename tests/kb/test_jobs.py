"""Knowledge-base jobs of the server's job runner (the real ``e5studio kb create|reembed --job-id`` processes on the
tiny model): submitted as the web UI and the admin API submit them, they run the one job lifecycle (Running ->
Succeeded, progress on the record and in the job folder), and a SIGKILL or a server shutdown mid-batch, then
Resume (after a restart), leaves exactly the chunks of a run that never crashed (no duplicate, none missing),
searches answering from the complete version meanwhile."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e5studio.control.job_records import JOB_FAILED, JOB_INTERRUPTED, JOB_RUNNING, JOB_SUCCEEDED, KIND_KB
from e5studio.control.job_runner import JobRunner
from e5studio.control.kb_jobs import KbCreate, submit_create, submit_reembed
from e5studio.control.store import Store
from e5studio.errors import ConflictError, InputError
from e5studio.jobs.kb import ops
from e5studio.jobs.kb.build import Source
from e5studio.jobspec.layout import PROGRESS_FILE
from e5studio.settings import EngineSettings
from tests import stores
from tests.batch_embed.conftest import cli_env
from tests.kb.conftest import CHUNKING, OPTIONS, long_documents, write_jsonl
from tests.kb.test_resume import _rows

QUERY = "protein kinase"


@pytest.fixture
def setup(tmp_path: Path, tiny_dir: Path) -> Iterator[tuple[Store, JobRunner, Path]]:
    """A store (SQLite, or PostgreSQL with E5STUDIO_TEST_STORE=postgres) with endpoints ``ep`` and ``ep2`` (int8),
    a runner on it, and 24 documents of mixed lengths."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    store = Store(stores.store_for(data_dir))
    store.create_project("default")
    store.create_endpoint("default", "ep", str(tiny_dir), 32)
    store.create_endpoint("default", "ep2", str(tiny_dir), 32, precision="int8")
    runner = JobRunner(store, data_dir, env=cli_env())
    docs = write_jsonl(tmp_path / "docs.jsonl", long_documents(24, seed=4))
    try:
        yield store, runner, docs
    finally:
        runner.close(timeout=5)
        store.close()


def _reference(store: Store, docs: Path, data_dir: Path) -> list[tuple[str, int, str, int, int]]:
    """The chunks of the same documents built in this process, without a job or a crash."""
    ops.create(store, "default", "ref", "ep", Source(docs, "auto", None, "id"), CHUNKING, OPTIONS, data_dir)
    return _rows(Path(store.current_kb_version("default", "ref")[1].path))


def _spec(docs: Path, name: str) -> KbCreate:
    return KbCreate(name=name, endpoint="ep", project="default", data=str(docs), id_field="id",
                    chunk_tokens=CHUNKING["chunk_tokens"], overlap=CHUNKING["overlap"])


def _hits(store: Store, name: str) -> list[dict[str, object]]:
    return [h.to_json() for h in ops.search(store, "default", name, QUERY, 5, None, False,
                                            EngineSettings(model="unused", device="cpu", threads=1))]


def test_create_and_reembed_run_as_jobs_of_the_runner(setup: tuple[Store, JobRunner, Path]) -> None:
    store, runner, docs = setup
    reference = _reference(store, docs, runner.data_dir)
    with pytest.raises(InputError, match="chunk tokens must be at least 8"):
        submit_create(runner, KbCreate(name="bad", endpoint="ep", project="default", data=str(docs), chunk_tokens=4))
    with pytest.raises(InputError, match="does not exist on the server"):
        submit_create(runner, KbCreate(name="bad", endpoint="ep", project="default", data=str(docs) + ".missing"))
    for hostile, message in (("a" * 300 + "/" + "b" * 300, "cannot be read"), ("x" * 5000, "1 to 4,096"),
                             ("doc\udc80s", "does not exist"), ("", "1 to 4,096")):
        with pytest.raises(InputError, match=message):
            submit_create(runner, KbCreate(name="bad", endpoint="ep", project="default", data=hostile))
    with pytest.raises(InputError, match="control character|NUL"):
        submit_create(runner, KbCreate(name="bad", endpoint="ep", project="default", data="docs\x00.jsonl"))
    assert [kb.name for kb in store.list_kbs()] == ["ref"]  # nothing recorded for a refused submission

    kb, job = submit_create(runner, _spec(docs, "papers"))
    assert job.kind == KIND_KB and job.status == JOB_RUNNING and job.pid is not None
    with pytest.raises(ConflictError, match="is building knowledge base 'papers' already"):
        runner.start_kb("reembed", kb, store.get_endpoint("default", "ep2"), {})
    done = runner.wait(job.id, 240)
    assert done.status == JOB_SUCCEEDED, runner.log_tail(job.id)
    assert done.metrics["kb_version"] == 1 and done.metrics["chunks"] == len(reference)
    assert done.step == 24 and done.total_steps == 24  # documents done, of the input's
    status = json.loads((Path(done.output) / PROGRESS_FILE).read_text())  # what the job page shows
    assert status["line"].startswith("kb papers")
    _, version = store.current_kb_version("default", "papers")
    assert _rows(Path(version.path)) == reference

    kb, job = submit_reembed(runner, "default", "papers", "ep2")
    done = runner.wait(job.id, 240)
    assert done.status == JOB_SUCCEEDED, runner.log_tail(job.id)
    _, version = store.current_kb_version("default", "papers")
    assert version.version == 2 and version.stamp["precision"] == "int8" and done.metrics["kb_version"] == 2
    assert _rows(Path(version.path)) == reference


def _mid_batch(store: Store, runner: JobRunner, job_id: str, batch: Path) -> Path:
    """Wait until the job's batch manifest lists a shard (the batch not complete yet); the manifest."""
    deadline = time.monotonic() + 240
    manifest = batch / "manifest.json"
    while time.monotonic() < deadline:
        try:
            if json.loads(manifest.read_text())["shards"]:
                return manifest
        except (OSError, ValueError, KeyError):
            pass
        assert store.get_job(job_id).status == JOB_RUNNING, runner.log_tail(job_id)
        time.sleep(0.02)
    raise AssertionError(f"no shard in {batch} after 240 s: {runner.log_tail(job_id)}")


def _not_complete(manifest: Path) -> None:
    assert json.loads(manifest.read_text())["status"] != "complete", "stopped too late: the batch was complete"


@pytest.mark.slow
def test_sigkill_or_restart_during_a_kb_job_then_resume_leaves_every_chunk_once(
        setup: tuple[Store, JobRunner, Path]) -> None:
    store, runner, docs = setup
    reference = _reference(store, docs, runner.data_dir)
    kb = store.create_kb("default", "papers", "ep", chunking=CHUNKING, id_field="id")
    ep, ep2 = store.get_endpoint("default", "ep"), store.get_endpoint("default", "ep2")

    # SIGKILL mid-batch: the runner records Failed (killed by SIGKILL); Resume continues after the last shard
    job = runner.start_kb("create", kb, ep, {"data": str(docs), "id_field": "id", "window_size": "4"})
    manifest = _mid_batch(store, runner, job.id, runner.data_dir / "kb" / kb.id / "v1" / "batches" / "0000")
    pid = store.get_job(job.id).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _not_complete(manifest)
    deadline = time.monotonic() + 30
    while (killed := store.get_job(job.id)).status == JOB_RUNNING and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.05)
    assert killed.status == JOB_FAILED and "SIGKILL" in killed.status_reason, killed
    with pytest.raises(ConflictError, match="no complete version yet"):
        store.current_kb_version("default", "papers")
    runner.resume(job.id)
    done = runner.wait(job.id, 240)
    assert done.status == JOB_SUCCEEDED, runner.log_tail(job.id)
    assert _rows(Path(store.current_kb_version("default", "papers")[1].path)) == reference
    before = _hits(store, "papers")

    # a server shutdown mid-batch (its runner closes: SIGTERM, Interrupted), then a restarted server resumes it
    job = runner.start_kb("reembed", kb, ep2, {"window_size": "4"})
    manifest = _mid_batch(store, runner, job.id, runner.data_dir / "kb" / kb.id / "v2" / "batches" / "0000")
    runner.close(timeout=10)
    _not_complete(manifest)
    assert store.get_job(job.id).status == JOB_INTERRUPTED
    assert store.get_kb("default", "papers").current_version == 1 and _hits(store, "papers") == before
    restarted = JobRunner(store, runner.data_dir, env=cli_env())
    try:
        restarted.recover()
        restarted.resume(job.id)
        done = restarted.wait(job.id, 240)
    finally:
        restarted.close(timeout=5)
    assert done.status == JOB_SUCCEEDED, restarted.log_tail(job.id)
    _, version = store.current_kb_version("default", "papers")
    assert version.version == 2 and version.stamp["precision"] == "int8"
    assert _rows(Path(version.path)) == reference  # the same documents, chunked the same, none twice
