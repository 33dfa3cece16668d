"""embed-corpus's progress counts rows (a line file small enough is counted first; Parquet knows its rows) and
megabytes only where they mean something (a line file too large to count); the job's record gets the rows done."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from e5studio.control.store import Store
from e5studio.jobs.batch_embed import progress as batch_progress
from e5studio.jobs.batch_embed.progress import Measure, count_lines
from e5studio.jobs.batch_embed.reader import InputSpec, plan_windows
from e5studio.jobs.batch_embed.runner import run_job
from e5studio.jobs.lifecycle import JobHandle
from e5studio.jobspec.progress import Progress
from tests.batch_embed.conftest import make_texts, settings_for, write_jsonl


@pytest.mark.parametrize("text", ["a\nb\n\nc\n", "a\nb\n\nc", "", "\n", "only"])
def test_lines_are_counted_as_the_reader_numbers_them(tmp_path: Path, text: str) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    windows = plan_windows(InputSpec.create(path, "text"), 2)
    assert count_lines(path) == sum(w.count for w in windows)


def test_a_small_file_is_measured_in_rows_a_large_one_in_megabytes(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    small = write_jsonl(tmp_path / "small.jsonl", [{"contents": t} for t in make_texts(30)])
    assert Measure.of(InputSpec.create(small)) == Measure("rows", 30)
    table = pa.table({"contents": make_texts(12)})
    pq.write_table(table, tmp_path / "rows.parquet")
    assert Measure.of(InputSpec.create(tmp_path / "rows.parquet")) == Measure("rows", 12)
    monkeypatch.setattr(batch_progress, "COUNT_LINES_UP_TO", 100)  # as if the file were too large to count
    large = Measure.of(InputSpec.create(small))
    assert large == Measure("MB", small.stat().st_size)
    scale = large.scale()
    assert scale is not None and scale(12_345_678) == "12.3"


def test_a_small_corpus_shows_rows_not_megabytes_and_its_record_gets_the_rows_done(tmp_path: Path, tiny_dir: Path
                                                                                   ) -> None:
    """Issue 27, point 13: a few kilobytes used to show ``0.00/0.00 MB``."""
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"contents": t} for t in make_texts(30, seed=2)] + ["{bad"])
    out = io.StringIO()
    with Store(tmp_path / "e5studio.db") as store:
        job = store.create_job("batch_embed", str(tiny_dir), str(tmp_path), {})
        store.update_job(job.id, total_steps=31)
        handle = JobHandle(store, job.id, Progress("embed-corpus", stream=out, interval_s=0.0))
        run_job(settings_for(corpus, tmp_path / "vectors", tiny_dir, window_size=8), handle=handle)
        done = store.get_job(job.id)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("embed-corpus: embedding passages  0/31 rows   0%"), lines[0]
    assert lines[-1].startswith("embed-corpus: embedding passages  31/31 rows 100%"), lines[-1]
    assert "30 passages" in lines[-1] and "1 rejected" in lines[-1]
    assert not any("MB" in line for line in lines)
    assert (done.status, done.step, done.metrics["count"], done.metrics["rejects"], done.metrics["dim"]) == (
        "Succeeded", 31, 30, 1, 32)
