"""Writing shards behind the embedding (issue 12, point 5: Parquet writing overlapped with compute): the
writer thread keeps order, bounds what waits, hands its errors to the job, and writes what was embedded before
a failure; the job's output is the same as one window after the other, and the next window's compute starts
while the previous shard is still being written."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from e5studio.jobs.batch_embed import runner
from e5studio.jobs.batch_embed.runner import run_job
from e5studio.jobs.batch_embed.windows import embed_window
from e5studio.jobs.batch_embed.write_behind import WriteBehind
from e5studio.jobs.batch_embed.writer import read_manifest, read_output
from tests.batch_embed.conftest import settings_for


def test_items_written_in_order_on_another_thread() -> None:
    seen: list[tuple[int, str]] = []
    writer: WriteBehind[int] = WriteBehind(lambda i: seen.append((i, threading.current_thread().name)))
    for i in range(20):
        writer.submit(i)
    writer.close()
    assert [i for i, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {"embed-corpus-writer"}
    writer.close()  # closing twice is harmless


def test_submit_blocks_while_depth_items_wait() -> None:
    release = threading.Event()
    started = threading.Event()

    def write(i: int) -> None:
        started.set()
        release.wait(5)

    writer: WriteBehind[int] = WriteBehind(write, depth=1)
    writer.submit(0)  # taken by the writer, which now waits
    assert started.wait(5)
    writer.submit(1)  # waits in the queue
    blocked = threading.Event()
    third = threading.Thread(target=lambda: (writer.submit(2), blocked.set()))
    third.start()
    assert not blocked.wait(0.3), "a third window was accepted while one was written and one waited"
    release.set()
    third.join(5)
    assert blocked.is_set()
    writer.close()


def test_a_write_error_reaches_the_caller_and_stops_later_writes() -> None:
    written: list[int] = []

    def write(i: int) -> None:
        if i == 2:
            raise OSError("disk full")
        written.append(i)

    writer: WriteBehind[int] = WriteBehind(write)
    with pytest.raises(OSError, match="disk full"):
        for i in range(50):
            writer.submit(i)
            time.sleep(0.01)
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert written == [0, 1]  # nothing after the failed window


def _timed(monkeypatch: pytest.MonkeyPatch, write_delay: float) -> list[tuple[str, int, float, float]]:
    """Record (what, window, start, end) of each embedding and each (slowed) shard write of the local loop."""
    events: list[tuple[str, int, float, float]] = []
    real_embed, real_write = runner.embed_vectors, runner.write_window

    def embed(embedder, prepared, progress=None):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        out = real_embed(embedder, prepared, progress)
        events.append(("embed", prepared.window.spec.index, t, time.perf_counter()))
        return out

    def write(embedded, output):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        time.sleep(write_delay)  # a slow disk
        out = real_write(embedded, output)
        events.append(("write", embedded.prepared.window.spec.index, t, time.perf_counter()))
        return out

    monkeypatch.setattr(runner, "embed_vectors", embed)
    monkeypatch.setattr(runner, "write_window", write)
    return events


def test_next_window_is_embedded_while_the_previous_is_written(tmp_path: Path, corpus: Path, tiny_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    reference = tmp_path / "reference"
    run_job(settings_for(corpus, reference, tiny_dir, window_size=16))
    events = _timed(monkeypatch, write_delay=0.3)
    out = tmp_path / "out"
    run_job(settings_for(corpus, out, tiny_dir, window_size=16))
    embeds = {w: (s, e) for what, w, s, e in events if what == "embed"}
    writes = {w: (s, e) for what, w, s, e in events if what == "write"}
    assert sorted(embeds) == sorted(writes) == list(range(7))
    overlapped = [w for w in range(6) if embeds[w + 1][0] < writes[w][1]]
    assert len(overlapped) >= 5, f"window k+1 embedded while k was written only for {overlapped}"
    # the same output as the reference run: every id once, in order, the same vectors
    ids, vectors = read_output(out, verify=True)
    ref_ids, ref_vectors = read_output(reference, verify=True)
    assert ids == ref_ids
    np.testing.assert_array_equal(vectors, ref_vectors)
    manifest = read_manifest(out)
    assert manifest is not None and [s["window"] for s in manifest["shards"]] == list(range(7))


def test_windows_embedded_before_a_failure_are_still_written(tmp_path: Path, corpus: Path, tiny_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _timed(monkeypatch, write_delay=0.2)
    real_embed = runner.embed_vectors

    def embed(embedder, prepared, progress=None):  # type: ignore[no-untyped-def]
        if prepared.window.spec.index == 3:
            raise KeyboardInterrupt  # Ctrl-C while window 3 is embedded
        return real_embed(embedder, prepared, progress)

    monkeypatch.setattr(runner, "embed_vectors", embed)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_job(settings_for(corpus, out, tiny_dir, window_size=16))
    manifest = read_manifest(out)
    assert manifest is not None and [s["window"] for s in manifest["shards"]] == [0, 1, 2]
    monkeypatch.undo()
    run_job(settings_for(corpus, out, tiny_dir, window_size=16))  # resumes at window 3
    reference = tmp_path / "reference"
    run_job(settings_for(corpus, reference, tiny_dir, window_size=16))
    assert read_output(out, verify=True)[0] == read_output(reference)[0]


def test_a_failed_shard_write_stops_the_job_and_a_rerun_finishes_it(tmp_path: Path, corpus: Path, tiny_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = runner.write_window

    def write(embedded, output):  # type: ignore[no-untyped-def]
        if embedded.prepared.window.spec.index == 2:
            raise OSError(28, "No space left on device")
        return real_write(embedded, output)

    monkeypatch.setattr(runner, "write_window", write)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        run_job(settings_for(corpus, out, tiny_dir, window_size=16))
    manifest = read_manifest(out)
    assert manifest is not None and [s["window"] for s in manifest["shards"]] == [0, 1]
    monkeypatch.undo()
    result = run_job(settings_for(corpus, out, tiny_dir, window_size=16))
    assert result.manifest["count"] == 100
    assert read_output(out, verify=True)[0] == [str(i) for i in range(100)]


def test_embed_window_still_embeds_then_writes(tmp_path: Path, corpus: Path, tiny_dir: Path) -> None:
    """The Ray worker's one-step form gives the shard the local loop writes."""
    from e5studio.engine.embedder import Embedder
    from e5studio.jobs.batch_embed.reader import iter_windows
    from e5studio.jobs.batch_embed.windows import prepare_window
    from e5studio.settings import EngineSettings

    settings = settings_for(corpus, tmp_path / "out", tiny_dir, window_size=16)
    embedder = Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", threads=1))
    window = next(iter_windows(settings.input, 16, None))
    result = embed_window(embedder, prepare_window(embedder, window, "passage"), tmp_path / "out")
    assert result.rows == 16 and result.shard is not None and result.seconds > 0
