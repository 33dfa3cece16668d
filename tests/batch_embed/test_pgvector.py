"""The PostgreSQL + pgvector sink against a real server (started by the ``postgres_url`` session fixture)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from e5studio.cli import main
from e5studio.errors import InputError
from e5studio.jobs.batch_embed.runner import run_job
from e5studio.jobs.batch_embed.sinks import PostgresSink, redact
from e5studio.jobs.batch_embed.writer import read_output
from tests.batch_embed.conftest import make_texts, run_cli, settings_for, write_jsonl


def _rows(url: str, table: str) -> dict[str, tuple[str, np.ndarray]]:
    with psycopg.connect(url) as conn:
        register_vector(conn)
        return {r[0]: (r[1], r[2].to_numpy()) for r in
                conn.execute(f"SELECT id, text_sha256, embedding FROM {table}").fetchall()}


def test_round_trip_rerun_and_nearest_neighbour(tmp_path: Path, tiny_dir: Path, postgres_url: str) -> None:
    texts = make_texts(60, seed=7)
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"contents": t} for t in texts])
    out = tmp_path / "out"
    sink = PostgresSink(postgres_url, "kb_passages")
    first = run_job(settings_for(corpus, out, tiny_dir, window_size=25), sinks=[sink])
    report = first.sinks[0]
    assert (report["inserted"], report["updated"], report["rows"]) == (60, 0, 60)
    ids, vectors = read_output(out)
    rows = _rows(postgres_url, "kb_passages")
    assert sorted(rows) == sorted(ids)
    for i, row_id in enumerate(ids):
        digest, vector = rows[row_id]
        assert digest == hashlib.sha256(texts[int(row_id)].encode()).hexdigest()
        np.testing.assert_array_equal(vector, vectors[i])  # float32 stored exactly

    # re-running (the job is complete: only the sink runs) duplicates nothing and rewrites nothing
    again = run_job(settings_for(corpus, out, tiny_dir, window_size=25), sinks=[sink]).sinks[0]
    assert (again["inserted"], again["updated"], again["unchanged"], again["rows"]) == (0, 0, 60, 60)

    with psycopg.connect(postgres_url) as conn:
        register_vector(conn)
        # the HNSW cosine index exists and the planner uses it for a k-NN query
        indexes = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'kb_passages'").fetchall()
        assert any("USING hnsw (embedding vector_cosine_ops)" in r[0] for r in indexes)
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT id FROM kb_passages ORDER BY embedding <=> %s LIMIT 1", (vectors[0],)).fetchall())
        assert "kb_passages_embedding_hnsw" in plan
        for i in (0, 17, 59):  # the nearest neighbour of a stored vector is itself
            nearest = conn.execute("SELECT id, embedding <=> %s FROM kb_passages ORDER BY embedding <=> %s "
                                   "LIMIT 1", (vectors[i], vectors[i])).fetchone()
            assert nearest is not None and nearest[0] == ids[i] and nearest[1] == pytest.approx(0.0, abs=1e-6)


def test_changed_texts_are_updated_in_place(tmp_path: Path, tiny_dir: Path, postgres_url: str) -> None:
    texts = make_texts(10, seed=8)
    sink = PostgresSink(postgres_url, "kb_updates")
    run_job(settings_for(write_jsonl(tmp_path / "a.jsonl", [{"contents": t} for t in texts]), tmp_path / "a",
                         tiny_dir), sinks=[sink])
    texts[3] = "a completely different passage about enzymes"
    report = run_job(settings_for(write_jsonl(tmp_path / "b.jsonl", [{"contents": t} for t in texts]),
                                  tmp_path / "b", tiny_dir), sinks=[sink]).sinks[0]
    assert (report["inserted"], report["updated"], report["unchanged"], report["rows"]) == (0, 1, 9, 10)
    assert _rows(postgres_url, "kb_updates")["3"][0] == hashlib.sha256(texts[3].encode()).hexdigest()


def test_dimension_mismatch_and_bad_urls(tmp_path: Path, tiny_dir: Path, postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE TABLE IF NOT EXISTS kb_other (id text PRIMARY KEY, text_sha256 text NOT NULL, "
                     "embedding vector(3) NOT NULL)")
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"contents": "one passage"}])
    with pytest.raises(InputError, match="dimension 3"):
        run_job(settings_for(corpus, tmp_path / "out", tiny_dir), sinks=[PostgresSink(postgres_url, "kb_other")])
    with pytest.raises(InputError, match="identifier"):
        PostgresSink(postgres_url, "bad; drop table x")
    with pytest.raises(InputError, match="postgres://"):
        PostgresSink("mysql://x", "t")
    assert redact("postgresql://me:secret@db:5432/kb") == "postgresql://me:***@db:5432/kb"


def test_cli_sink(tmp_path: Path, tiny_dir: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"contents": t} for t in make_texts(12, seed=9)])
    args = ["embed-corpus", str(corpus), "--model", str(tiny_dir), "--output", str(tmp_path / "out"),
            "--sink", postgres_url, "--table", "kb_cli", "--no-progress"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "12 inserted" in first.stdout and "table kb_cli has 12 rows" in first.stdout
    assert main(list(args)) == 0  # the rerun in this process (the same main() the process above ran)
    assert "0 inserted, 0 updated, 12 unchanged; table kb_cli has 12 rows" in capsys.readouterr().out
