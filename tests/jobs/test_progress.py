"""One progress style for every long job: a named phase, done/total, rate, ETA; plain lines every 5 s off a
terminal, redrawn in place on one; the phase in progress.json for the web UI's job page."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from e5studio.control.store import JobRecord
from e5studio.jobspec.progress import PROGRESS_FILE, Progress, read_status
from e5studio.web.jobs import job_phase
from tests.jobs.test_train_job_id import FLAGS, data_dir, train  # noqa: F401 - data_dir is a fixture


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_at_start_every_five_seconds_and_at_the_end(tmp_path: Path) -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress("eval", stream=out, status_file=tmp_path / PROGRESS_FILE, clock=clock)
    phase = progress.phase("embedding passages", 1000, "rows")
    for _ in range(20):  # 20 s, 50 rows a second
        clock.now += 1.0
        phase.advance(50, tokens=5000)
    phase.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "eval: embedding passages  0/1,000 rows   0%  0:00 elapsed"
    assert len(lines) == 1 + 4 + 1  # start, every 5 s, end
    assert lines[1] == ("eval: embedding passages  250/1,000 rows  25%  50 rows/s  5,000 tokens/s  0:05 elapsed, "
                        "ETA 0:15")
    assert lines[-1].startswith("eval: embedding passages  1,000/1,000 rows 100%")
    status = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert (status["phase"], status["done"], status["total"], status["finished"]) == ("embedding passages", 1000,
                                                                                       1000, True)
    assert read_status(tmp_path)["line"] == lines[-1]


def test_a_terminal_line_is_redrawn_in_place() -> None:
    clock, out = Clock(), Tty()
    phase = Progress("train", stream=out, clock=clock).phase("epoch 1 of 2", 10, "steps")
    for _ in range(10):
        clock.now += 0.5
        phase.advance()
    phase.close()
    text = out.getvalue()
    assert text.count("\r") == 12 and text.endswith("\n") and text.count("\n") == 1


def test_train_names_its_phases_and_the_web_page_shows_them(data_dir: Path,  # noqa: F811
                                                            tiny_nodropout_dir: Path, toy_dir: Path,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    output = tmp_path / "out"
    flags = [f for f in FLAGS if f != "--no-progress"]
    from e5studio.cli import main

    assert main(["train", "--dataset", "toy", "--model", str(tiny_nodropout_dir), "--output", str(output),
                 "--data-dir", str(data_dir), *flags, "--eval-dir", str(toy_dir)]) == 0
    err = capsys.readouterr().err
    for phase in ("train: evaluation before training: embedding passages", "train: evaluation before training: "
                  "embedding queries", "train: evaluation before training: searching and scoring",
                  "train: epoch 1 of 1  ", "train: evaluation after epoch 1: embedding passages"):
        assert phase in err, err
    assert err.index("evaluation before training") < err.index("epoch 1 of 1") < err.index("after epoch 1")
    assert "loss " in err and "query groups/s" in err
    job = JobRecord(id="j", kind="train", model="m", output=str(output), status="Succeeded", status_reason="",
                    params={}, dataset_id=None, step=6, total_steps=6, metrics={}, created_at="", updated_at="")
    shown = job_phase(job)
    assert shown is not None and shown["phase"] == "evaluation after epoch 1: searching and scoring", shown
