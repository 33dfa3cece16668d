"""Killed at any moment, the same command continues and the output equals an uninterrupted run's.

Two ways: a real ``SIGKILL`` of the CLI at several points of a run, and, in-process, a crash injected at
every atomic rename the job makes (every shard, manifest and index step), each followed by a rerun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from e5studio.cli import main
from e5studio.jobs.batch_embed.runner import run_job
from e5studio.jobs.batch_embed.writer import read_output
from e5studio.jobspec.layout import MANIFEST_FILE as MANIFEST
from tests.batch_embed.conftest import cli_env, make_texts, settings_for, write_jsonl


class Crash(BaseException):
    """Stands for the process dying: nothing in the job catches a BaseException that is not an Exception."""


def _corpus(tmp_path: Path, n: int) -> Path:
    rows: list[object] = [{"contents": t} for t in make_texts(n, seed=11)]
    rows[5] = "{not json"
    rows[n - 3] = {"contents": None}
    return write_jsonl(tmp_path / "passages.jsonl", rows)


def _assert_same_output(out: Path, reference: Path) -> None:
    ids, vectors = read_output(out, verify=True)
    ref_ids, ref_vectors = read_output(reference, verify=True)
    assert ids == ref_ids and len(set(ids)) == len(ids)  # every id exactly once, same order
    np.testing.assert_array_equal(vectors, ref_vectors)
    assert (out / "rejects.jsonl").read_text() == (reference / "rejects.jsonl").read_text()
    manifest, ref_manifest = (json.loads((d / MANIFEST).read_text()) for d in (out, reference))
    assert manifest["status"] == "complete" and manifest["count"] == ref_manifest["count"]
    assert [(s["window"], s["rows"], s["sha256"]) for s in sorted(manifest["shards"], key=lambda s: s["window"])] \
        == [(s["window"], s["rows"], s["sha256"]) for s in ref_manifest["shards"]]
    index_ids = [json.loads(line) for line in (out / "index" / "ids.jsonl").read_text().splitlines()]
    assert index_ids == ref_ids
    np.testing.assert_array_equal(np.load(out / "index" / "vectors.npy"), ref_vectors)


def _assert_only_complete_shards_visible(out: Path) -> None:
    json.loads((out / MANIFEST).read_text())  # always a whole manifest
    for p in (out / "shards").glob("part-*.parquet"):
        pq.read_table(p)  # a shard's final name only ever holds a complete file


def test_crash_at_every_rename_then_resume(tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = _corpus(tmp_path, 40)
    reference = tmp_path / "reference"
    run_job(settings_for(corpus, reference, tiny_dir, window_size=8))

    real_replace = os.replace
    calls = {"n": 0, "crash_at": 0}

    def replace(src: object, dst: object) -> None:
        calls["n"] += 1
        if calls["n"] == calls["crash_at"]:
            raise Crash(f"killed before rename #{calls['n']} ({dst})")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)
    calls["crash_at"] = -1
    run_job(settings_for(corpus, tmp_path / "count", tiny_dir, window_size=8))
    renames = calls["n"]
    assert renames >= 12  # manifest writes + 5 shards + the index
    for crash_at in range(1, renames + 1):
        out = tmp_path / f"crash-{crash_at}"
        calls.update(n=0, crash_at=crash_at)
        with pytest.raises(Crash):
            run_job(settings_for(corpus, out, tiny_dir, window_size=8))
        if (out / MANIFEST).exists():
            _assert_only_complete_shards_visible(out)
        calls.update(n=0, crash_at=-1)
        run_job(settings_for(corpus, out, tiny_dir, window_size=8))
        _assert_same_output(out, reference)
        assert not list(out.rglob(".tmp-*")), f"temporary files left after resuming from crash #{crash_at}"


def _manifest_shards(out: Path) -> int:
    try:
        return len(json.loads((out / MANIFEST).read_text())["shards"])
    except (OSError, ValueError):
        return 0


def test_sigkill_at_several_moments_then_resume(tmp_path: Path, tiny_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    corpus = _corpus(tmp_path, 240)
    reference = tmp_path / "reference"
    run_job(settings_for(corpus, reference, tiny_dir, window_size=4))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "e5studio", "embed-corpus", str(corpus), "--model", str(tiny_dir),
               "--output", str(out), "--window-size", "4", "--no-progress"]
    kills = 0
    for target in (1, 12, 30, 45):
        # killed however this iteration ends: a failure here must not leave the job running after the test
        with subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
            try:
                deadline = time.monotonic() + 120
                while proc.poll() is None and _manifest_shards(out) < target and time.monotonic() < deadline:
                    time.sleep(0.005)
                if proc.poll() is not None:
                    break  # finished before this point: nothing left to interrupt
                time.sleep((target % 4) * 0.004)  # land at different moments inside a window
                os.kill(proc.pid, signal.SIGKILL)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        kills += 1
        assert json.loads((out / MANIFEST).read_text())["status"] == "running"
        _assert_only_complete_shards_visible(out)
    assert kills >= 2, "the job finished before it could be killed twice"
    # the same command finishes the job in this process (main(), what the killed processes ran; one process start
    # fewer), on one thread as they ran (cli_env), the thread count put back afterwards
    threads = torch.get_num_threads()
    try:
        code = main([*command[3:], "--threads", "1", "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    done = capsys.readouterr()
    assert code == 0, done.err
    assert "continuing" in done.err and "240 vectors" not in done.out  # 2 bad lines rejected
    _assert_same_output(out, reference)
