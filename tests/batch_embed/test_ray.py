"""``--engine ray`` on a local Ray instance with the tiny model: the same shards and manifest as local.

Ray starts once in this module (two CPUs, two actors); a partial local run finished by Ray must also equal
an uninterrupted run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray

from e5studio.errors import InputError
from e5studio.jobs.batch_embed.ray_executor import RayExecutor, RayOptions
from e5studio.jobs.batch_embed.runner import run_job
from e5studio.jobs.batch_embed.writer import read_output
from e5studio.jobspec.layout import MANIFEST_FILE as MANIFEST
from tests.batch_embed.conftest import make_texts, settings_for, write_jsonl

# Ray Data's own configuration objects warn about their deprecated fields when they are read.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _shards(out: Path) -> list[tuple[int, str | None, int]]:
    manifest = json.loads((out / MANIFEST).read_text())
    return sorted((s["window"], s["file"], s["rows"]) for s in manifest["shards"])


def test_ray_engine_writes_the_same_shards_and_manifest(tmp_path: Path, tiny_dir: Path, local_ray: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    rows: list[object] = [{"contents": t} for t in make_texts(50, seed=21)]
    rows[7] = "{bad json"
    corpus = write_jsonl(tmp_path / "passages.jsonl", rows)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    run_job(settings_for(corpus, local, tiny_dir, window_size=12))
    engine = RayExecutor(RayOptions(workers=2, cpus_per_worker=1))
    result = run_job(settings_for(corpus, on_ray, tiny_dir, window_size=12), engine)
    assert result.run["engine"] == "ray" and result.manifest["status"] == "complete"
    assert _shards(on_ray) == _shards(local)
    ids, vectors = read_output(on_ray, verify=True)
    local_ids, local_vectors = read_output(local)
    assert ids == local_ids and len(ids) == 49
    np.testing.assert_allclose(vectors, local_vectors, atol=1e-6, rtol=0)
    rejects = [json.loads(line) for line in (on_ray / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [8]
    assert (on_ray / "index" / "vectors.npy").is_file()

    # a local run stopped after two windows, finished on Ray: the same output again
    partial = tmp_path / "partial"
    calls = {"n": 0}
    real_replace = os.replace

    class Crash(BaseException):
        pass

    def replace(src: object, dst: object) -> None:
        real_replace(src, dst)  # type: ignore[arg-type]
        if str(dst).endswith(MANIFEST):
            calls["n"] += 1
            if calls["n"] == 3:  # the first write + two windows committed
                raise Crash

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        run_job(settings_for(corpus, partial, tiny_dir, window_size=12))
    monkeypatch.setattr(os, "replace", real_replace)
    assert [w for w, _, _ in _shards(partial)] == [0, 1]
    finished = run_job(settings_for(corpus, partial, tiny_dir, window_size=12), engine)
    assert finished.run["passages"] == 49 - 24 + 1  # windows 2..4 (window 0 holds the bad line)
    ids, vectors = read_output(partial, verify=True)
    assert ids == local_ids
    np.testing.assert_allclose(vectors, local_vectors, atol=1e-6, rtol=0)


def test_ray_engine_fail_mode_reports_line_numbers(tmp_path: Path, tiny_dir: Path, local_ray: None) -> None:
    rows: list[object] = [{"contents": t} for t in make_texts(10, seed=2)]
    rows[4] = {"no": "text"}
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(InputError, match=r"c\.jsonl:5: missing text field"):
        run_job(settings_for(corpus, tmp_path / "out", tiny_dir, window_size=5, bad_records="fail"),
                RayExecutor(RayOptions(workers=1)))
