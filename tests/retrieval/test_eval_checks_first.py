"""``e5studio eval`` checks its evaluation set before it loads a model (issue 27, point 5): a wrong ``--data``
is named at once, not after a model load (minutes for E5-Large, or a download)."""

from __future__ import annotations

from pathlib import Path

import pytest

from e5studio.cli import main


def test_a_folder_without_an_evaluation_set_is_named_before_any_model_is_touched(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the CLI's main() in this process (the order of the checks is the command's, whichever process runs
    it; tests/batch_embed/test_cli.py runs `e5studio eval` as a process)."""
    (tmp_path / "not-a-set").mkdir()
    # a model that cannot load: were it touched first, its error would be the one printed
    missing_model = tmp_path / "no-such-model"
    code = main(["eval", "--data", str(tmp_path / "not-a-set"), "--model", str(missing_model), "--device", "cpu"])
    stderr = capsys.readouterr().err
    assert code != 0
    assert "passages.jsonl not found" in stderr, stderr
    assert str(missing_model) not in stderr and "loading" not in stderr, stderr
