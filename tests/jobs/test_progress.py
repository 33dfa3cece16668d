"""One progress type for every long job: a named phase, done/total, rate, ETA; plain lines every 5 s off a
terminal, redrawn in place on one; the phase in progress.json for the web UI's job page."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from e5studio.jobs.train.report import Progress as TrainProgress
from e5studio.jobspec.layout import PROGRESS_FILE
from e5studio.jobspec.progress import Progress, read_status


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


def test_one_phase_at_a_time_and_a_callback_for_the_evaluation_pipeline(tmp_path: Path) -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress("eval", stream=out, status_file=tmp_path / PROGRESS_FILE, clock=clock, interval_s=0.0)
    shown = progress.callback({"passages": "embedding passages", "scoring": "searching and scoring"},
                              prefix="before training", units={"scoring": "queries"})
    shown("passages", 0, 4)
    shown("passages", 2, 4)
    passages = progress.current
    shown("scoring", 1, 3)  # a new phase ends the one before
    assert passages is not None and passages.closed
    shown("scoring", 3, 3)  # its total reached: the phase ends
    shown("scoring", 3, 3)  # told again: nothing more
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["eval: before training: embedding passages  0/4 rows   0%  0:00 elapsed",
                         "eval: before training: embedding passages  0/4 rows   0%  0:00 elapsed",
                         "eval: before training: embedding passages  2/4 rows  50%  0:00 elapsed"]
    assert lines[3] == lines[2]  # the phase's last line, when the next began
    assert lines[4].startswith("eval: before training: searching and scoring  0/3 queries")
    assert lines[-1].startswith("eval: before training: searching and scoring  3/3 queries 100%")
    assert len(lines) == 8
    assert read_status(tmp_path)["line"] == lines[-1]
    shown("scoring", 0, 3)  # the same phase again (another evaluation under the same title): a new pass
    assert progress.current is not None and not progress.current.closed
    assert out.getvalue().splitlines()[-1].startswith("eval: before training: searching and scoring  0/3 queries")


def test_the_train_job_names_its_phases_on_the_one_progress_type(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    progress = TrainProgress(total=4, initial=0, enabled=True, output=tmp_path, steps_per_epoch=2)
    assert isinstance(progress, Progress)
    progress.evaluation("evaluation before training")("passages", 2048, 5183)
    progress.update(0.5, 3.0, epoch=1)
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("train: evaluation before training: embedding passages  0/5,183 rows   0%")
    assert lines[1].startswith("train: evaluation before training: embedding passages  2,048/5,183 rows  40%")
    assert lines[-1].startswith("train: epoch 1 of 2  1/2 steps  50%") and "loss 0.5000" in lines[-1]
    assert read_status(tmp_path)["phase"] == "epoch 1 of 2"
