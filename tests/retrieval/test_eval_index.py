"""``e5studio eval --index DIR``: the passage vectors of an ``embed-corpus`` output, only the queries embedded;
the same metrics as embedding everything; refused when model, precision or prefix differ. And the eval's
progress lines on stderr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e5studio.cli import main


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 passages, 6 judged queries: passage i is about topic i."""
    folder = tmp_path_factory.mktemp("evalset")
    words = ["protein", "vitamin", "cell", "gene", "tumour", "immune", "receptor", "dose", "enzyme", "insulin"]
    with (folder / "passages.jsonl").open("w") as f:
        for i in range(40):
            f.write(json.dumps({"contents": f"{words[i % 10]} {words[(i * 3) % 10]} study number {i}"}) + "\n")
    with (folder / "queries.test.jsonl").open("w") as f, (folder / "qrels.test.tsv").open("w") as q:
        for i in range(6):
            f.write(json.dumps({"qid": f"q{i}", "query": f"{words[i]} {words[(i * 3) % 10]}"}) + "\n")
            q.write(f"q{i}\t{i}\t1\n")
    return folder


def test_eval_index_equals_full_eval_and_embeds_only_queries(small_set: Path, tiny_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vectors"
    assert main(["embed-corpus", str(small_set / "passages.jsonl"), "-o", str(out), "--model", str(tiny_dir),
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["eval", "--data", str(small_set), "--model", str(tiny_dir), "--device", "cpu"]) == 0
    full = capsys.readouterr()
    assert main(["eval", "--data", str(small_set), "--model", str(tiny_dir), "--device", "cpu",
                 "--index", str(out)]) == 0
    indexed = capsys.readouterr()
    full_report, index_report = json.loads(full.out), json.loads(indexed.out)
    assert index_report["metrics"] == pytest.approx(full_report["metrics"], abs=1e-4)
    assert "embedding passages" in full.err and "embedding queries" in full.err
    assert "embedding passages" not in indexed.err and "embedding queries" in indexed.err
    assert "searching and scoring" in indexed.err


def test_eval_index_refuses_other_settings(small_set: Path, tiny_dir: Path, minilm_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vectors"
    assert main(["embed-corpus", str(small_set / "passages.jsonl"), "-o", str(out), "--model", str(tiny_dir),
                 "--device", "cpu", "--input-type", "none"]) == 0
    capsys.readouterr()
    base = ["eval", "--data", str(small_set), "--device", "cpu", "--index", str(out)]
    assert main([*base, "--model", str(tiny_dir)]) == 2
    assert "passage prefix '' (--input-type none) vs the eval's 'passage: '" in capsys.readouterr().err
    assert main([*base, "--model", str(minilm_dir), "--no-prefixes"]) == 2
    assert "does not match this eval: model" in capsys.readouterr().err
    assert main([*base, "--model", str(tiny_dir), "--no-prefixes", "--precision", "int8"]) == 2
    assert "precision fp32 vs the eval's int8" in capsys.readouterr().err
    assert main([*base, "--model", str(tiny_dir), "--no-prefixes"]) == 0
    assert main(["eval", "--data", str(small_set), "--device", "cpu", "--model", str(tiny_dir), "--index",
                 str(tmp_path / "nothing")]) == 2
    assert "make one with `e5studio embed-corpus" in capsys.readouterr().err
