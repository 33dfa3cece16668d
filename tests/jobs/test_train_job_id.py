"""`e5studio train --job-id` (the server's recorded job) and SIGTERM, through the real CLI entry point."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from e5studio.cli import main
from e5studio.control.store import (
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_INTERRUPTED,
    JOB_OWNER_CLI,
    JOB_OWNER_SERVER,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    JobRecord,
    Store,
)
from e5studio.jobs.train import commands
from e5studio.jobspec.dataset_format import validate_dataset
from tests import stores

# 24 queries / batch 4 = 6 steps, one epoch, a checkpoint every 2 steps
FLAGS = ["--epochs", "1", "--batch-size", "4", "--train-n-passages", "3", "--lr", "1e-3", "--save-every", "2",
         "--query-max-length", "16", "--passage-max-length", "32", "--device", "cpu", "--no-progress"]
STEPS = 6


@pytest.fixture
def data_dir(tmp_path: Path, toy_dir: Path) -> Iterator[Path]:
    """A data directory with the toy dataset recorded in its store; the CLI (in this process, or a child that
    inherits the environment) finds that store (on PostgreSQL runs through $E5STUDIO_STORE, set apart from the
    test's own monkeypatch, which tests undo midway)."""
    folder = tmp_path / "data"
    report = validate_dataset(toy_dir, 3)
    with Store(stores.store_for(folder)) as store:
        store.add_dataset("toy", str(toy_dir), passages=report.passages, queries=report.queries,
                          positives=report.positives, negatives=report.negatives,
                          passages_sha256=report.passages_sha256, train_sha256=report.train_sha256)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in stores.store_env(folder).items():
            patch.setenv(name, value)
        yield folder


def _store(data_dir: Path) -> Store:
    return Store(stores.store_for(data_dir))


def _server_job(data_dir: Path, model: Path, output: Path) -> JobRecord:
    """A job row the way the server's runner records it before starting the process."""
    with _store(data_dir) as store:
        return store.create_job("train", str(model), str(output.resolve()), {"epochs": 1},
                                store.get_dataset("toy").id, owner=JOB_OWNER_SERVER, runner_id="r", runner_pid=1)


def train(data_dir: Path, model: Path, output: Path, *extra: str) -> int:
    return main(["train", "--dataset", "toy", "--model", str(model), "--output", str(output), "--data-dir",
                 str(data_dir), *FLAGS, *extra])


def test_job_id_runs_the_recorded_job(data_dir: Path, tiny_nodropout_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    job = _server_job(data_dir, tiny_nodropout_dir, output)
    assert train(data_dir, tiny_nodropout_dir, output, "--job-id", job.id) == 0
    with _store(data_dir) as store:
        jobs = store.list_jobs()
    assert [j.id for j in jobs] == [job.id]  # no second job recorded
    done = jobs[0]
    assert (done.status, done.step, done.total_steps, done.owner, done.params) == (
        JOB_SUCCEEDED, STEPS, STEPS, JOB_OWNER_SERVER, {"epochs": 1})
    assert (output / "final" / "config.json").is_file()


def test_job_id_must_name_this_run(data_dir: Path, tiny_nodropout_dir: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    job = _server_job(data_dir, tiny_nodropout_dir, tmp_path / "theirs")
    assert train(data_dir, tiny_nodropout_dir, tmp_path / "mine", "--job-id", job.id) == 2
    assert f"job {job.id} is not this run: its output differ" in capsys.readouterr().err
    assert train(data_dir, tiny_nodropout_dir, tmp_path / "mine", "--job-id", "nope") == 2
    assert "job 'nope' not found" in capsys.readouterr().err
    with _store(data_dir) as store:
        assert store.get_job(job.id).status == JOB_RUNNING  # untouched
        store.update_job(job.id, status=JOB_SUCCEEDED)
    assert train(data_dir, tiny_nodropout_dir, tmp_path / "theirs", "--job-id", job.id) == 2
    assert f"job {job.id} is Succeeded" in capsys.readouterr().err


def test_a_job_cancelled_before_its_process_started_does_not_run(data_dir: Path, tiny_nodropout_dir: Path,
                                                                 tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    job = _server_job(data_dir, tiny_nodropout_dir, output)
    with _store(data_dir) as store:
        store.transition_job(job.id, (JOB_RUNNING,), JOB_CANCELLED, "cancelled")
    assert train(data_dir, tiny_nodropout_dir, output, "--job-id", job.id, "--resume") == 0
    assert "was cancelled before it started" in capsys.readouterr().err
    assert not (output / "metrics.jsonl").exists()
    with _store(data_dir) as store:
        assert store.get_job(job.id).status == JOB_CANCELLED


def _sigterm_at(monkeypatch: pytest.MonkeyPatch, step: int, before: object = None) -> None:
    """Make the reporter send this process SIGTERM after ``step`` (calling ``before()`` first)."""
    original = commands.StoreReporter.on_step

    def on_step(self: commands.StoreReporter, at: int, total: int, loss: float) -> None:
        original(self, at, total, loss)
        if at == step:
            if callable(before):
                before(self)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(commands.StoreReporter, "on_step", on_step)


def test_sigterm_interrupts_like_ctrl_c_and_resume_continues(data_dir: Path, tiny_nodropout_dir: Path,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    handler = signal.getsignal(signal.SIGTERM)
    _sigterm_at(monkeypatch, 3)
    assert train(data_dir, tiny_nodropout_dir, output) == 128 + signal.SIGTERM
    assert "e5studio: interrupted (SIGTERM)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == handler  # restored
    with _store(data_dir) as store:
        (job,) = store.list_jobs()
    assert (job.status, job.owner, job.pid) == (JOB_INTERRUPTED, JOB_OWNER_CLI, os.getpid())
    assert job.status_reason == ("interrupted (SIGTERM); newest checkpoint step-00000002: `e5studio train ... "
                                 "--resume` continues from there")
    monkeypatch.undo()
    assert train(data_dir, tiny_nodropout_dir, output, "--resume") == 0
    assert "resuming from step-00000002 (step 2)" in capsys.readouterr().err
    with _store(data_dir) as store:
        assert [(j.id, j.status, j.step) for j in store.list_jobs()] == [(job.id, JOB_SUCCEEDED, STEPS)]


def test_sigterm_after_a_cancel_keeps_cancelled_and_resume_by_job_id_continues(
        data_dir: Path, tiny_nodropout_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    job = _server_job(data_dir, tiny_nodropout_dir, output)

    def cancel(reporter: commands.StoreReporter) -> None:  # what the server does: record, then signal
        handle = reporter.handle
        assert handle.store is not None and handle.job_id is not None
        handle.store.transition_job(handle.job_id, (JOB_RUNNING,), JOB_CANCELLED, "cancelled")

    _sigterm_at(monkeypatch, 3, cancel)
    assert train(data_dir, tiny_nodropout_dir, output, "--job-id", job.id) == 128 + signal.SIGTERM
    with _store(data_dir) as store:
        cancelled = store.get_job(job.id)
        assert (cancelled.status, cancelled.status_reason) == (JOB_CANCELLED, "cancelled")
        # pretend it failed (resumable too); a Cancelled job becomes Failed only by running again
        assert store.transition_job(job.id, (JOB_CANCELLED,), JOB_RUNNING, "resumed")
        assert store.transition_job(job.id, (JOB_RUNNING,), JOB_FAILED, "pretend it failed")
    monkeypatch.undo()
    capsys.readouterr()
    assert train(data_dir, tiny_nodropout_dir, output, "--job-id", job.id, "--resume") == 0
    assert "resuming from step-00000002 (step 2)" in capsys.readouterr().err
    with _store(data_dir) as store:
        done = store.get_job(job.id)
        assert (done.status, done.status_reason, done.step) == (JOB_SUCCEEDED, "", STEPS)
        assert len(store.list_jobs()) == 1
