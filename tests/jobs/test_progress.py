"""One progress style for every long job: a named phase, done/total, rate, ETA; plain lines every 5 s off a
terminal, redrawn in place on one; the phase in progress.json for the web UI's job page."""

from __future__ import annotations

import io
import json
from pathlib import Path

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
