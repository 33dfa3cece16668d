"""The real CLI in a subprocess: embed-corpus (progress, summary), search, eval (JSON report)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from e5studio.cli import main
from e5studio.engine.embedder import Embedder
from e5studio.jobs.batch_embed.writer import read_output
from e5studio.retrieval.evaluate import EvalSettings, run_eval, with_prefix
from e5studio.retrieval.search import exact_search
from tests.batch_embed.conftest import cli_env, make_texts, run_cli, write_jsonl


def test_commands_are_listed_and_import_no_heavy_library() -> None:
    code = ("import sys, e5studio.cli; p = e5studio.cli.build_parser(); "
            "heavy = [m for m in ('torch', 'pyarrow', 'ray', 'psycopg') if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
    helps = run_cli("--help").stdout
    for command in ("embed-corpus", "search", "eval"):
        assert command in helps


def test_embed_corpus_progress_summary_and_search(tmp_path: Path, tiny_dir: Path, tiny_embedder: Embedder,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    texts = make_texts(30, seed=4)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n")
    out = tmp_path / "out"
    result = run_cli("embed-corpus", str(corpus), "--model", str(tiny_dir), "--output", str(out),
                     "--window-size", "8", "--input-type", "none")
    assert result.returncode == 0, result.stderr
    assert "passages/s" in result.stderr and "tokens/s" in result.stderr and "ETA" in result.stderr  # progress
    assert "embedding passages  30/30 rows 100%" in result.stderr and " MB" not in result.stderr  # rows, not 0.00 MB
    assert "30 vectors (dim 32) in 4 shard(s)" in result.stdout and "input type none" in result.stdout
    ids, vectors = read_output(out)
    np.testing.assert_allclose(vectors, tiny_embedder.embed(texts), atol=1e-6)

    found = run_cli("search", str(out), texts[12], "a query about insulin", "-k", "3", "--json")
    assert found.returncode == 0, found.stderr
    answers = json.loads(found.stdout)
    queries = tiny_embedder.embed([texts[12], "a query about insulin"], "query")
    scores, indices = exact_search(queries, vectors, 3)
    for answer, srow, irow in zip(answers, scores, indices, strict=True):
        assert [h["id"] for h in answer["hits"]] == [ids[i] for i in irow]
        np.testing.assert_allclose([h["score"] for h in answer["hits"]], srow, atol=1e-5)
    # the table with the texts in this process (the same main() the processes above ran)
    assert main(["search", str(out), texts[5], "-k", "2", "--input-type", "none", "--show-text"]) == 0
    shown = capsys.readouterr().out
    first = shown.splitlines()[1].split()
    assert first[0] == "1" and first[2] == "5" and texts[5][:40] in shown


def _collection(root: Path) -> Path:
    """A small graded collection in the shared layout: 40 passages, 6 queries (grades 1-3)."""
    root.mkdir()
    passages = make_texts(40, seed=13)
    write_jsonl(root / "passages.jsonl", [{"contents": p} for p in passages])
    queries = [{"qid": f"q{i}", "query": " ".join(passages[i * 6].split()[:6])} for i in range(6)]
    write_jsonl(root / "queries.test.jsonl", queries)
    qrels = [f"q{i}\t{i * 6}\t2\nq{i}\t{i * 6 + 1}\t1\nq{i}\t{(i * 7) % 40}\t3\n" for i in range(6)]
    (root / "qrels.test.tsv").write_text("".join(qrels))
    return root


def test_eval_report(tmp_path: Path, tiny_dir: Path, tiny_embedder: Embedder,
                     capsys: pytest.CaptureFixture[str]) -> None:
    data = _collection(tmp_path / "coll")
    report_path = tmp_path / "report.json"
    result = run_cli("eval", "--model", str(tiny_dir), "--data", str(data), "--report", str(report_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert json.loads(result.stdout) == report
    assert set(report["metrics"]) == {"ndcg@10", "mrr@10", "recall@100", "map"}
    assert (report["queries"], report["passages"]) == (6, 40)
    assert (report["query_prefix"], report["passage_prefix"]) == ("query: ", "passage: ")
    expected = run_eval(tiny_embedder, EvalSettings(data=data))["metrics"]
    for name, value in expected.items():
        assert abs(report["metrics"][name] - value) < 1e-4
    assert 0.0 <= report["metrics"]["ndcg@10"] <= 1.0 and report["metrics"]["recall@100"] == 1.0

    # the prefix flags and the missing-data error in this process (the same main() the process above ran)
    assert main(["eval", "--model", str(tiny_dir), "--data", str(data), "--no-prefixes"]) == 0
    plain_report = json.loads(capsys.readouterr().out)
    assert (plain_report["query_prefix"], plain_report["passage_prefix"]) == ("", "")
    assert main(["eval", "--model", str(tiny_dir), "--data", str(data), "--query-prefix", "",
                 "--passage-prefix", ""]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == plain_report["metrics"]

    assert main(["eval", "--model", str(tiny_dir), "--data", str(tmp_path / "nowhere")]) == 2
    assert "passages.jsonl not found" in capsys.readouterr().err


def test_with_prefix() -> None:
    assert with_prefix("x", "query: ") == "query: x"
    assert with_prefix("query: x", "query: ") == "query: x"
    assert with_prefix("x", "") == "x"
