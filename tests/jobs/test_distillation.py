"""``--distill-weight``: the loss adds the score distillation from the frozen base model (LwF) - zero at the
first step (the model is the base), pulling back afterwards; 0 is the plain E5 recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e5studio.cli import main
from e5studio.jobs.train.settings import TrainSettings
from tests.jobs.test_train_job_id import FLAGS, data_dir  # noqa: F401 - data_dir is a fixture


def _losses(output: Path) -> list[float]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["event"] == "step"]


def test_distillation_is_zero_at_the_base_and_changes_the_steps_after(data_dir: Path,  # noqa: F811
                                                                      tiny_nodropout_dir: Path,
                                                                      tmp_path: Path) -> None:
    base = ["train", "--dataset", "toy", "--model", str(tiny_nodropout_dir), "--data-dir", str(data_dir), *FLAGS,
            "--interpolate", "1"]
    assert main([*base, "--output", str(tmp_path / "plain")]) == 0
    assert main([*base, "--output", str(tmp_path / "zero"), "--distill-weight", "0"]) == 0
    assert main([*base, "--output", str(tmp_path / "lwf"), "--distill-weight", "5",
                 "--distill-temperature", "0.05"]) == 0
    plain, zero, lwf = (_losses(tmp_path / name) for name in ("plain", "zero", "lwf"))
    assert zero == plain, "weight 0 is the plain recipe, step for step"
    assert lwf[0] == pytest.approx(plain[0], abs=1e-6), "no dropout: at step 1 the model is the base, KL = 0"
    assert all(a > b for a, b in zip(lwf[1:], plain[1:], strict=True)), (lwf, plain)  # KL > 0 once it moved


def test_distillation_settings_are_checked() -> None:
    assert TrainSettings().distill_weight == 0.0 and TrainSettings().distill_temperature == 0.05
    with pytest.raises(Exception, match="distill"):
        TrainSettings(distill_weight=-1.0)
    with pytest.raises(Exception, match="distill"):
        TrainSettings(distill_temperature=0.0)
