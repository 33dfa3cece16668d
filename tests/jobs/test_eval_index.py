"""The train job's named phases (on stderr and on the web UI's job page), and ``train --eval-index DIR``: the
evaluation before training reuses the start model's passage vectors from an ``embed-corpus`` output (same
metrics, the passages not embedded again); a mismatched index is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e5studio.cli import main
from e5studio.control.store import JobRecord
from e5studio.web.jobs import job_phase
from tests.jobs.test_train_job_id import FLAGS, data_dir  # noqa: F401 - data_dir is a fixture


def _first_eval(output: Path) -> dict[str, float]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["event"] == "eval")
    return {k: v for k, v in first.items() if "@" in k or k == "map"}


def test_train_eval_index_scores_the_start_like_embedding_it(data_dir: Path,  # noqa: F811
                                                             tiny_nodropout_dir: Path, toy_dir: Path,
                                                             tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    vectors = tmp_path / "vectors"
    assert main(["embed-corpus", str(toy_dir / "passages.jsonl"), "-o", str(vectors), "--model",
                 str(tiny_nodropout_dir), "--device", "cpu", "--no-progress"]) == 0
    flags = [f for f in FLAGS if f != "--no-progress"]
    base = ["train", "--dataset", "toy", "--model", str(tiny_nodropout_dir), "--data-dir", str(data_dir), *flags,
            "--eval-dir", str(toy_dir)]
    capsys.readouterr()
    assert main([*base, "--output", str(tmp_path / "plain")]) == 0
    err = capsys.readouterr().err
    phases = ["train: evaluation before training: embedding passages", "train: evaluation before training: "
              "embedding queries", "train: evaluation before training: searching and scoring",
              "train: epoch 1 of 1  ", "train: evaluation after epoch 1: embedding passages"]
    assert all(phase in err for phase in phases), err
    assert [err.index(p) for p in phases] == sorted(err.index(p) for p in phases)
    assert "loss " in err and "query groups/s" in err
    job = JobRecord(id="j", kind="train", dataset_id=None, model="m", output=str(tmp_path / "plain"), params={})
    shown = job_phase(job)  # what the web UI's job page shows
    assert shown is not None and shown["phase"] == "evaluation after epoch 1: searching and scoring", shown
    assert main([*base, "--output", str(tmp_path / "indexed"), "--eval-index", str(vectors)]) == 0
    err = capsys.readouterr().err
    assert "evaluation before training: embedding passages" not in err
    assert "evaluation before training: embedding queries" in err
    assert "evaluation after epoch 1: embedding passages" in err  # the trained model embeds the corpus again
    assert _first_eval(tmp_path / "indexed") == pytest.approx(_first_eval(tmp_path / "plain"), abs=1e-4)
    assert main([*base, "--output", str(tmp_path / "other"), "--eval-index", str(vectors),
                 "--eval-max-length", "16"]) == 2
    assert "max length" in capsys.readouterr().err
