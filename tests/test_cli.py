"""The real command line: `python -m e5studio embed ...` in a subprocess, output checked against Embedder."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from e5studio.cli import main
from e5studio.engine.embedder import Embedder
from tests.broken_checkpoints import BROKEN_CHECKPOINTS, Broken


def _env(**extra: str) -> dict[str, str]:
    """The caller's environment without E5STUDIO_* settings, offline, on CPU (so vectors compare at 1e-6)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("E5STUDIO_")}
    env.update(HF_HUB_OFFLINE="1", E5STUDIO_DEVICE="cpu", **extra)
    return env


def run_cli(*args: str, stdin: str | None = None, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "e5studio", *args], input=stdin, capture_output=True, text=True,
                          env=env or _env(), cwd=cwd, timeout=300)


def _vectors(result: subprocess.CompletedProcess[str]) -> np.ndarray:
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert list(payload) == ["data"]
    return np.asarray(payload["data"], dtype=np.float64)


# --------------------------------------------------------------------------------------------- output


def test_embed_prints_the_embedders_vectors(minilm_embedder: Embedder) -> None:
    result = run_cli("embed", "--model", "all-minilm-l6-v2", "query: a", "query: b")
    vectors = _vectors(result)
    assert vectors.shape == (2, 384)
    expected = minilm_embedder.embed(["query: a", "query: b"])
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-6)


def _in_process(capsys: pytest.CaptureFixture[str], *args: str) -> np.ndarray:
    """``main(args)`` in this process (the function the processes above run, without their start-up): vectors."""
    assert main([*args, "--device", "cpu"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert list(payload) == ["data"]
    return np.asarray(payload["data"], dtype=np.float64)


def test_embed_reads_one_text_per_line_from_stdin(minilm_embedder: Embedder, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # a text stream with universal newlines, as a process's stdin
    monkeypatch.setattr(sys, "stdin", io.StringIO("query: a\nquery: b\r\npassage: c d e\n", newline=None))
    vectors = _in_process(capsys, "embed", "--model", "all-minilm-l6-v2")
    expected = minilm_embedder.embed(["query: a", "query: b", "passage: c d e"])
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-6)


def test_input_type_adds_the_prefix(minilm_embedder: Embedder, capsys: pytest.CaptureFixture[str]) -> None:
    vectors = _in_process(capsys, "embed", "--model", "all-minilm-l6-v2", "--input-type", "query", "x", "query: x")
    explicit = minilm_embedder.embed(["query: x"])[0]
    np.testing.assert_allclose(vectors, np.stack([explicit, explicit]), rtol=0, atol=1e-6)
    assert np.abs(vectors[0] - minilm_embedder.embed(["x"])[0]).max() > 1e-3


def test_invalid_input_type_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["embed", "--model", "all-minilm-l6-v2", "--input-type", "document", "x"])
    assert info.value.code == 2
    assert "--input-type" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- errors


def _assert_clean_error(result: subprocess.CompletedProcess[str], parts: tuple[str, ...]) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("e5studio: error: ")
    assert "Traceback" not in result.stderr
    for part in parts:
        assert part in result.stderr, f"{part!r} not in {result.stderr!r}"


# in a process: two cases by default, all four with the slow tests (every case runs in-process below)
@pytest.mark.parametrize("case", ["missing-directory", "wrong-shape",
                                  pytest.param("xlm-roberta", marks=pytest.mark.slow),
                                  pytest.param("missing-config", marks=pytest.mark.slow)])
def test_broken_model_exits_2_with_the_message(case: str, tiny_dir: Path, tmp_path: Path) -> None:
    broken: Broken = BROKEN_CHECKPOINTS[case](tiny_dir, tmp_path)
    _assert_clean_error(run_cli("embed", "--model", broken.model, "x"), broken.message_parts)


@pytest.mark.parametrize("case", sorted(BROKEN_CHECKPOINTS))
def test_every_model_error_is_reported_without_traceback(case: str, tiny_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The same path in-process for every broken checkpoint (cheap): exit code 2 and the message."""
    broken: Broken = BROKEN_CHECKPOINTS[case](tiny_dir, tmp_path)
    assert main(["embed", "--model", broken.model, "--device", "cpu", "x"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("e5studio: error: ")
    for part in broken.message_parts:
        assert part in captured.err


def _exit_code(argv: list[str]) -> int:
    """main()'s exit code, whether it returns one or argparse exits."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("flag", "value", "topic"),
    [("--max-batch-tokens", "0", "batch"), ("--max-batch-tokens", "-1", "batch"), ("--threads", "0", "thread"),
     ("--max-length", "0", "length"), ("--max-length", "1", "length")],
)
def test_out_of_range_engine_flag_is_a_clean_error(flag: str, value: str, topic: str, tiny_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A bad flag value is the user's mistake: exit code 2 and a message naming it, never a traceback
    (an uncaught exception here fails the test) and never a silently ignored value."""
    code = _exit_code(["embed", "--model", str(tiny_dir), "--device", "cpu", flag, value, "x"])
    captured = capsys.readouterr()
    assert code == 2, captured.out[:200]
    assert captured.out == ""
    assert "error" in captured.err
    assert topic in captured.err.lower()


def test_unreachable_hub_model_exits_2_with_the_remedy(tmp_path: Path) -> None:
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir()
    env = _env(HF_HOME=str(hf_home))
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    result = run_cli("embed", "--model", "intfloat/e5-large-v2", "x", cwd=tmp_path, env=env)
    _assert_clean_error(result, ("intfloat/e5-large-v2", "tried:", str(hf_home), "--model", "hf download"))


def test_endpoints_list_keeps_a_reason_whole() -> None:
    from e5studio.cli import REASON_LINES, _reason_lines

    reason = "cannot load model 'x'; tried:\n  - local directory /a/b (not found)\n  - " + "word " * 60
    lines = _reason_lines(reason, "p", "e")
    shown = " ".join(line.strip() for line in lines)
    for word in ("tried:", "local directory /a/b (not found)"):
        assert word in shown
    assert shown.count("word") == 60 and all(len(line) <= 104 for line in lines)
    long = _reason_lines("\n".join(f"line {i}" for i in range(40)), "p", "e")
    assert len(long) == REASON_LINES and long[-1].strip() == "... (29 more lines: e5studio endpoints show p e)"


def test_login_page_names_a_command_that_exists() -> None:
    from pathlib import Path

    import e5studio
    from e5studio.cli import build_parser

    page = (Path(e5studio.__file__).parent / "web" / "templates" / "login.html").read_text()
    assert "e5studio admin-token --data-dir DIR" in page
    args = build_parser().parse_args(["admin-token", "--data-dir", "DIR"])
    assert args.data_dir == "DIR"
