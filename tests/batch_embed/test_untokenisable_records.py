"""Issue 13, item 8: a record the tokenizer cannot take (valid JSON with an escaped lone surrogate) never
blocks a job: embed-corpus puts it in the rejects file and finishes; dataset validation and training name
its file and line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from e5studio.cli import main
from e5studio.errors import InputError
from e5studio.jobs.train.passages import PassageStore, read_examples
from e5studio.jobspec.dataset_format import validate_dataset
from tests.serving.server import cli_env


def test_embed_corpus_rejects_a_lone_surrogate_and_finishes(tmp_path: Path, tiny_dir: Path) -> None:
    """The reproduction of the issue (default --bad-records skip): exit 1 and no shard before. The tiny random
    model carries MiniLM's tokenizer, the one that could not encode the record."""
    source = tmp_path / "s.jsonl"
    source.write_bytes(b'{"contents": "good"}\n{"contents": "bad \\ud800"}\n{"contents": "also good"}\n')
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "e5studio", "embed-corpus", str(source), "--model", str(tiny_dir), "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in rejects] == [2]
    assert "lone surrogate (U+D800) at character 4" in rejects[0]["reason"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["count"] == 2  # the two good records
    assert manifest["rejects"]["count"] == 1

def test_embed_corpus_bad_records_fail_names_the_line(tmp_path: Path, tiny_dir: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """In this process (the CLI's main(), as the process above runs it): an error raised past main() fails here."""
    source = tmp_path / "s.jsonl"
    source.write_bytes(b'{"contents": "good"}\n{"contents": "bad \\udfff"}\n')
    code = main(["embed-corpus", str(source), "--model", str(tiny_dir), "-o", str(tmp_path / "out"),
                 "--bad-records", "fail", "--device", "cpu"])
    stderr = capsys.readouterr().err
    assert code != 0
    assert "s.jsonl:2: text field 'contents' has a lone surrogate (U+DFFF)" in stderr, stderr
    assert "Traceback" not in stderr


def _dataset(directory: Path, passage: str, query: str) -> Path:
    directory.mkdir()
    passages = [{"contents": "first passage"}, {"contents": passage}, {"contents": "third passage"}]
    (directory / "passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    train = [{"query": "query one", "positives": {"doc_id": [0]}, "negatives": {"doc_id": [2]}},
             {"query": query, "positives": {"doc_id": [2]}, "negatives": {"doc_id": [0]}}]
    (directory / "train.jsonl").write_text("".join(json.dumps(t) + "\n" for t in train))
    return directory


def test_validation_names_the_line_of_a_lone_surrogate(tmp_path: Path) -> None:
    report = validate_dataset(_dataset(tmp_path / "d", "bad \ud800 passage", "query \udfff two"))
    problems = [str(p) for p in report.errors]
    assert not report.ok
    assert any("passages.jsonl:2" in p and "lone surrogate (U+D800)" in p for p in problems), problems
    assert any("train.jsonl:2" in p and "\"query\" has a lone surrogate (U+DFFF)" in p for p in problems), problems


def test_training_data_names_the_line_instead_of_crashing_the_tokenizer(tmp_path: Path) -> None:
    directory = _dataset(tmp_path / "d", "bad \ud800 passage", "query \udfff two")
    with pytest.raises(InputError, match=r"train.jsonl:2: field \"query\" has a lone surrogate"):
        read_examples(directory / "train.jsonl", 8)
    store = PassageStore(directory / "passages.jsonl")
    try:
        assert store.text(0) == "first passage"
        with pytest.raises(InputError, match=r"passages.jsonl:2: field \"contents\" has a lone surrogate"):
            store.text(1)
    finally:
        store.close()
