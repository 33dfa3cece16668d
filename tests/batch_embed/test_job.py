"""The embed-corpus job in-process on the tiny model: output format, manifest, prefixes, formats, bad records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from e5studio.engine.embedder import Embedder
from e5studio.engine.model_identity import model_identity
from e5studio.errors import InputError
from e5studio.jobs.batch_embed.manifest_state import ManifestState
from e5studio.jobs.batch_embed.runner import run_job
from e5studio.jobs.batch_embed.writer import read_output
from e5studio.jobs.files import file_sha256
from e5studio.jobspec.layout import MANIFEST_FILE as MANIFEST
from e5studio.retrieval.index import ExactIndex
from tests.batch_embed.conftest import make_texts, settings_for, write_jsonl


def test_shards_manifest_and_index(tmp_path: Path, corpus: Path, texts: list[str], tiny_dir: Path,
                                   tiny_embedder: Embedder) -> None:
    out = tmp_path / "out"
    result = run_job(settings_for(corpus, out, tiny_dir, window_size=32))
    # shards: id (string) + text_sha256 + fixed-size float32 embedding
    shards = sorted((out / "shards").iterdir())
    assert [p.name for p in shards] == [f"part-00000{i}.parquet" for i in range(4)]
    schema = pq.read_schema(shards[0])
    assert schema.field("id").type == pa.string()
    assert schema.field("embedding").type == pa.list_(pa.float32(), tiny_embedder.dim)
    assert isinstance(schema.field("embedding").type, pa.FixedSizeListType)
    # vectors: the engine's, with 'passage: ' added, ids = line numbers, in input order
    ids, vectors = read_output(out, verify=True)
    assert ids == [str(i) for i in range(len(texts))]
    np.testing.assert_allclose(vectors, tiny_embedder.embed(texts, "passage"), atol=1e-6, rtol=0)
    # manifest: model + checksum, dim, count, settings, shards with rows and checksums
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["status"] == "complete" and manifest["count"] == len(texts) == result.manifest["count"]
    assert manifest["dim"] == tiny_embedder.dim
    assert len(manifest["model"]["sha256"]) == 64 and manifest["model"]["path"] == str(tiny_dir.resolve())
    assert manifest["settings"]["input_type"] == "passage" and manifest["settings"]["window_size"] == 32
    assert [s["rows"] for s in manifest["shards"]] == [32, 32, 32, 4]
    for entry in manifest["shards"]:
        assert file_sha256(out / entry["file"]) == entry["sha256"]
    table = pq.read_table(shards[0])
    assert table.column("text_sha256")[0].as_py() == hashlib.sha256(texts[0].encode()).hexdigest()
    # the search index next to it: a stored vector's nearest neighbour is itself
    index = ExactIndex.open(out / "index")
    hits = index.search(vectors[[5, 77]], k=3)
    assert [h[0].id for h in hits] == ["5", "77"]
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5)
    assert "100 vectors" in result.summary() and "tokens/s" in result.summary()


def test_prefix_never_twice_and_input_types(tmp_path: Path, tiny_dir: Path, tiny_embedder: Embedder) -> None:
    texts = ["passage: already prefixed text", "plain text about proteins", "query: looks like a query"]
    path = write_jsonl(tmp_path / "c.jsonl", [{"contents": t} for t in texts])
    outputs = {}
    for input_type in ("passage", "query", None):
        out = tmp_path / f"out-{input_type}"
        run_job(settings_for(path, out, tiny_dir, input_type=input_type))
        outputs[input_type] = read_output(out)[1]
    passage = tiny_embedder.embed(["passage: already prefixed text", "passage: plain text about proteins",
                                   "passage: query: looks like a query"])
    np.testing.assert_allclose(outputs["passage"], passage, atol=1e-6)
    np.testing.assert_allclose(outputs["query"], tiny_embedder.embed(
        ["query: passage: already prefixed text", "query: plain text about proteins", "query: looks like a query"]),
        atol=1e-6)
    np.testing.assert_allclose(outputs[None], tiny_embedder.embed(texts), atol=1e-6)


def test_every_format_gives_the_same_vectors(tmp_path: Path, tiny_dir: Path) -> None:
    texts = make_texts(40, seed=3)
    jsonl = write_jsonl(tmp_path / "c.jsonl", [{"contents": t} for t in texts])
    custom = write_jsonl(tmp_path / "custom.jsonl", [{"pid": f"p{i}", "body": t} for i, t in enumerate(texts)])
    text = tmp_path / "c.txt"
    text.write_text("\n".join(texts) + "\n")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"contents": texts}), parquet, row_group_size=7)
    results = {}
    for name, path, extra in (("jsonl", jsonl, {}), ("text", text, {}), ("parquet", parquet, {}),
                              ("custom", custom, {"text_field": "body", "id_field": "pid"})):
        run_job(settings_for(path, tmp_path / name, tiny_dir, window_size=16, **extra))
        results[name] = read_output(tmp_path / name)
    for name in ("text", "parquet"):
        assert results[name][0] == results["jsonl"][0]
        np.testing.assert_array_equal(results[name][1], results["jsonl"][1])
    assert results["custom"][0] == [f"p{i}" for i in range(40)]
    np.testing.assert_array_equal(results["custom"][1], results["jsonl"][1])


def _bad_corpus(tmp_path: Path) -> Path:
    lines = [json.dumps({"contents": t}) for t in make_texts(30, seed=5)]
    lines[3] = "{broken json"
    lines[17] = json.dumps({"title": "no contents field"})
    lines[25] = json.dumps({"contents": ""})
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_records_skipped_into_rejects_file(tmp_path: Path, tiny_dir: Path) -> None:
    out = tmp_path / "out"
    result = run_job(settings_for(_bad_corpus(tmp_path), out, tiny_dir, window_size=10))
    ids, _ = read_output(out)
    assert len(ids) == 27 and not {"3", "17", "25"} & set(ids)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"].split(":")[0]) for r in rejects] == [
        (4, "invalid JSON"), (18, "missing text field 'contents'"), (26, "empty text in field 'contents'")]
    assert rejects[0]["excerpt"] == "{broken json"
    assert result.manifest["rejects"]["count"] == 3
    assert "3 bad record(s)" in result.summary() and "line 4" in result.summary()


def test_bad_records_fail_the_job_with_line_numbers(tmp_path: Path, tiny_dir: Path) -> None:
    path = _bad_corpus(tmp_path)
    with pytest.raises(InputError) as info:
        run_job(settings_for(path, tmp_path / "out", tiny_dir, window_size=10, bad_records="fail"))
    message = str(info.value)
    assert f"{path}:4: invalid JSON" in message and "--bad-records skip" in message
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["status"] == "running" and manifest["shards"] == []  # nothing embedded past the bad window


def test_rerun_is_a_no_op_and_other_settings_are_refused(tmp_path: Path, corpus: Path, tiny_dir: Path) -> None:
    out = tmp_path / "out"
    run_job(settings_for(corpus, out, tiny_dir))
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    again = run_job(settings_for(corpus, out, tiny_dir))
    assert again.run["passages"] == 0 and "already complete" in again.summary()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before
    with pytest.raises(InputError, match="other settings.*input_type"):
        run_job(settings_for(corpus, out, tiny_dir, input_type=None))
    with pytest.raises(InputError, match="window_size"):
        run_job(settings_for(corpus, out, tiny_dir, window_size=7))
    redone = run_job(settings_for(corpus, out, tiny_dir, window_size=7, overwrite=True))
    assert redone.manifest["count"] == 100 and len(list((out / "shards").iterdir())) == 15
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        run_job(settings_for(corpus, tmp_path / "other", tiny_dir))
    with pytest.raises(InputError, match="not deleting"):
        run_job(settings_for(corpus, tmp_path / "other", tiny_dir, overwrite=True))


def test_empty_input(tmp_path: Path, tiny_dir: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    result = run_job(settings_for(path, tmp_path / "out", tiny_dir))
    assert result.manifest["count"] == 0 and result.manifest["status"] == "complete"
    assert len(ExactIndex.open(tmp_path / "out" / "index")) == 0


def test_one_job_per_output_folder(tmp_path: Path, corpus: Path, tiny_dir: Path) -> None:
    settings = settings_for(corpus, tmp_path / "out", tiny_dir)
    holder = ManifestState.open(settings, model_identity(settings.engine))
    try:
        with pytest.raises(InputError, match="another embed-corpus job is running"):
            run_job(settings)
        with pytest.raises(InputError, match="another embed-corpus job is running"):
            run_job(settings_for(corpus, tmp_path / "out", tiny_dir, overwrite=True))
    finally:
        holder.close()
    assert run_job(settings).manifest["count"] == 100


def test_workers_embed_micro_batches_at_once_with_the_same_vectors(tmp_path: Path, corpus: Path, tiny_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``workers`` reaches the engine, whose micro-batches then run one per worker: the shards do not change."""
    from e5studio.engine import embedder

    pools: list[int] = []
    start = embedder.start_workers

    def spy(workers: int, threads_per_worker: int):  # type: ignore[no-untyped-def]
        pools.append(workers)
        return start(workers, threads_per_worker)

    monkeypatch.setattr(embedder, "start_workers", spy)
    run_job(settings_for(corpus, tmp_path / "one", tiny_dir, window_size=100, workers=1))
    assert pools == []
    run_job(settings_for(corpus, tmp_path / "two", tiny_dir, window_size=100, workers=2))
    assert pools == [2]  # the engine's worker threads ran the window's micro-batches

    ids_one, vectors_one = read_output(tmp_path / "one", verify=True)
    ids_two, vectors_two = read_output(tmp_path / "two", verify=True)
    assert ids_one == ids_two
    np.testing.assert_array_equal(vectors_two, vectors_one)
