"""``e5studio eval`` checks its evaluation set before it loads a model (issue 27, point 5): a wrong ``--data``
is named at once, not after a model load (minutes for E5-Large, or a download)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.serving.server import cli_env


def test_a_folder_without_an_evaluation_set_is_named_before_any_model_is_touched(tmp_path: Path) -> None:
    (tmp_path / "not-a-set").mkdir()
    # a model that cannot load: were it touched first, its error would be the one printed
    missing_model = tmp_path / "no-such-model"
    run = subprocess.run([sys.executable, "-m", "e5studio", "eval", "--data", str(tmp_path / "not-a-set"),
                          "--model", str(missing_model)],
                         capture_output=True, text=True, timeout=120, env=cli_env(), stdin=subprocess.DEVNULL)
    assert run.returncode != 0, run
    assert "passages.jsonl not found" in run.stderr, run.stderr
    assert str(missing_model) not in run.stderr and "loading" not in run.stderr, run.stderr
