"""``e5studio embed-corpus --job-id`` (what the server's runner starts), through the real CLI entry point: the
process takes the recorded job over through its lifecycle handle and records its end itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from e5studio.cli import main
from e5studio.control.job_records import JOB_CANCELLED, JOB_FAILED, JOB_INTERRUPTED, JOB_RUNNING, KIND_BATCH_EMBED
from e5studio.control.store import Store
from e5studio.jobs.batch_embed import runner
from tests.batch_embed.conftest import make_texts, write_jsonl


def _job(tmp_path: Path, model: Path) -> tuple[Path, Path, str]:
    """A data directory whose store holds a Running batch job for ``<tmp>/job``; the corpus it embeds."""
    data_dir, folder = tmp_path / "data", tmp_path / "job"
    folder.mkdir()
    corpus = write_jsonl(tmp_path / "passages.jsonl", [{"contents": t} for t in make_texts(12, seed=5)] + ["{bad"])
    data_dir.mkdir()
    with Store(data_dir / "e5studio.db") as store:
        job = store.create_job(KIND_BATCH_EMBED, str(model), str(folder.resolve()), {"input": str(corpus)})
    return data_dir, corpus, job.id


def _embed(data_dir: Path, corpus: Path, model: Path, job_id: str, *extra: str) -> int:
    return main(["embed-corpus", str(corpus), "--output", str(data_dir.parent / "job" / "vectors"), "--model",
                 str(model), "--device", "cpu", "--threads", "1", "--no-progress", "--window-size", "4",
                 "--job-id", job_id, "--data-dir", str(data_dir), *extra])


def _get(data_dir: Path, job_id: str) -> tuple[str, str, int]:
    with Store(data_dir / "e5studio.db") as store:
        job = store.get_job(job_id)
    return job.status, job.status_reason, job.step


def test_a_cancelled_job_does_not_run(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, corpus, job_id = _job(tmp_path, tiny_dir)
    with Store(data_dir / "e5studio.db") as store:
        assert store.cancel_job(job_id)
    assert _embed(data_dir, corpus, tiny_dir, job_id) == 0
    assert "was cancelled before it started; nothing to do" in capsys.readouterr().err
    assert _get(data_dir, job_id)[0] == JOB_CANCELLED and not (tmp_path / "job" / "vectors").exists()


def test_a_job_of_another_run_is_refused(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, corpus, job_id = _job(tmp_path, tiny_dir)
    assert _embed(data_dir, corpus, tmp_path / "another-model", job_id) == 2
    assert f"job {job_id} is not this run: its model differ" in capsys.readouterr().err
    assert _get(data_dir, job_id)[0] == JOB_RUNNING  # untouched


def test_an_error_fails_the_job_and_ctrl_c_interrupts_it(tmp_path: Path, tiny_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir, corpus, job_id = _job(tmp_path, tiny_dir)
    assert _embed(data_dir, corpus, tiny_dir, job_id, "--bad-records", "fail") == 2
    status, reason, _ = _get(data_dir, job_id)
    assert status == JOB_FAILED and reason.startswith("InputError: ") and ":13:" in reason, reason

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "embed_vectors", interrupted)
    assert _embed(data_dir, corpus, tiny_dir, job_id) == 130  # a Failed job runs again, then Ctrl-C
    status, reason, _ = _get(data_dir, job_id)
    assert (status, reason) == (JOB_INTERRUPTED, "interrupted (Ctrl-C); resume continues after the last complete "
                                                 "shard")
    monkeypatch.undo()
    assert _embed(data_dir, corpus, tiny_dir, job_id) == 0
    with Store(data_dir / "e5studio.db") as store:
        done = store.get_job(job_id)
    assert (done.status, done.step, done.metrics["count"], done.metrics["rejects"]) == ("Succeeded", 13, 12, 1)
