"""Knowledge bases built on the embed-corpus machinery: chunks that reconstruct every document exactly,
vectors equal to the engine's on the same token ids, stamps, search, adds and deletes (embedded store)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from e5studio.control.store import Store
from e5studio.engine.embedder import Embedder
from e5studio.errors import ConflictError
from e5studio.jobs.kb import ops
from e5studio.jobs.kb.build import Source
from e5studio.retrieval.kb_vectors import EmbeddedChunks
from e5studio.settings import EngineSettings
from tests.kb.conftest import long_documents, write_jsonl

CHUNKING = {"mode": "tokens", "chunk_tokens": 48, "overlap": 8}


def _chunks(folder: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for shard in sorted(folder.rglob("shards/part-*.parquet")):
        rows += pq.read_table(shard).to_pylist()
    return rows


def _create(store: Store, tmp_path: Path, options: ops.BuildOptions, docs: list[dict[str, object]],
            name: str = "kb1", chunking: dict[str, object] | None = None) -> Path:
    data = write_jsonl(tmp_path / f"{name}.jsonl", docs)
    ops.create(store, "default", name, "ep", Source(data, "auto", None, "id"), chunking or CHUNKING, options,
               tmp_path / "data")
    _, version = store.current_kb_version("default", name)
    return Path(version.path)


def test_chunks_reconstruct_every_document_and_vectors_are_the_engines(kb_store: Store, tmp_path: Path,
                                                                        options: ops.BuildOptions,
                                                                        tiny_dir: Path) -> None:
    docs = long_documents(30)
    folder = _create(kb_store, tmp_path, options, docs)
    rows = _chunks(folder)
    by_doc: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_doc.setdefault(str(row["doc_id"]), []).append(row)
    assert sorted(by_doc) == sorted(str(d["id"]) for d in docs)
    embedder = Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", threads=1))
    for doc in docs:
        text = str(doc["contents"])
        chunks = sorted(by_doc[str(doc["id"])], key=lambda r: int(r["chunk"]))  # type: ignore[arg-type]
        assert [c["chunk"] for c in chunks] == list(range(len(chunks)))
        covered = 0
        for c in chunks:
            start, end = int(c["start"]), int(c["end"])  # type: ignore[arg-type]
            assert text[start:end] == c["text"]
            assert start <= covered < end or (start == covered == end == len(text))
            covered = end
            assert json.loads(str(c["metadata"])) == {"lang": doc["lang"], "year": doc["year"]}
            assert int(c["tokens"]) <= 48  # type: ignore[arg-type]
        assert covered == len(text)
        long = len(embedder.tokenizer.pieces(text)[0]) > 48
        assert (len(chunks) > 1) == long
    # a chunk cut at a word boundary is embedded as the engine embeds its text with the passage prefix
    sample = [r for r in rows if r["chunk"] in (0, 1)][:6]
    expected = embedder.embed([str(r["text"]).strip() for r in sample], "passage")
    got = np.asarray([r["embedding"] for r in sample], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_search_stamp_add_delete_and_rejects(kb_store: Store, tmp_path: Path, options: ops.BuildOptions) -> None:
    docs = long_documents(12)
    bad = ['{"id": "empty", "contents": ""}', '{"contents": "no id"}', '{"id": "doc-1", "contents": "duplicate"}',
           '{"id": "nul", "contents": "a\\u0000b"}', '{"id": "sur", "contents": "x\\ud800y"}',
           '{"id": "meta", "contents": "fine text", "bad": "x\\u0000"}', "not json"]
    folder = _create(kb_store, tmp_path, options, [*docs, *bad])
    rejects = [json.loads(line) for line in (folder / "batches" / "0000" / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == list(range(13, 20))
    reasons = " | ".join(r["reason"] for r in rejects)
    for words in ("empty text", "missing id field", "duplicate document id 'doc-1' (first at line 2)", "NUL",
                  "lone surrogate", "metadata field.bad has a NUL character", "invalid JSON"):
        assert words in reasons
    kb, version = kb_store.current_kb_version("default", "kb1")
    assert (version.documents, version.fields) == (12, ["lang", "year"])
    assert version.stamp["chunking"] == CHUNKING and len(version.stamp["model_sha256"]) == 64

    query = str(docs[4]["contents"])[:200]
    hits = ops.search(kb_store, "default", "kb1", query, 5, None, True, options.engine)
    assert hits[0].doc_id == "doc-4" and len({h.doc_id for h in hits}) == len(hits) == 5
    german = ops.search(kb_store, "default", "kb1", query, 50, {"lang": "de"}, False, options.engine)
    assert german and all(h.metadata["lang"] == "de" for h in german)
    with pytest.raises(Exception, match="unknown metadata field 'colour'"):
        ops.search(kb_store, "default", "kb1", query, 5, {"colour": "red"}, False, options.engine)
    for k in (0, 10**9):
        with pytest.raises(Exception, match="'k' must be an integer from 1 to 1000"):
            ops.search(kb_store, "default", "kb1", query, k, None, False, options.engine)

    # kb add: new ids in, an id already there rejected; the old chunks stay
    extra = write_jsonl(tmp_path / "more.jsonl", [{"id": "new-1", "contents": "an added document"},
                                                  {"id": "doc-2", "contents": "taken"}])
    ops.add(kb_store, "default", "kb1", Source(extra, "auto", None, "id"), options)
    _, version = kb_store.current_kb_version("default", "kb1")
    assert version.documents == 13
    reject = json.loads((folder / "batches" / "0001" / "rejects.jsonl").read_text())
    assert "already in the knowledge base" in reject["reason"]

    # deleting a document deletes its chunks from search
    before = EmbeddedChunks.load(folder)
    ops.delete_document(kb_store, "default", "kb1", "doc-4")
    after = EmbeddedChunks.load(folder)
    assert "doc-4" not in {r["doc_id"] for r in after.rows}
    assert len(after.rows) == len(before.rows) - sum(r["doc_id"] == "doc-4" for r in before.rows)
    hits = ops.search(kb_store, "default", "kb1", query, 5, None, True, options.engine)
    assert "doc-4" not in {h.doc_id for h in hits}


def test_stamp_mismatch_is_refused_on_write_and_search(kb_store: Store, tmp_path: Path, options: ops.BuildOptions,
                                                       tiny_dir: Path) -> None:
    _create(kb_store, tmp_path, options, long_documents(4))
    # the model files change under the endpoint (a fine-tune copied over them): the checksum differs
    weights = tiny_dir / "model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-4] + bytes(4 - i for i in range(4)))
        extra = write_jsonl(tmp_path / "x.jsonl", [{"id": "z", "contents": "more"}])
        with pytest.raises(ConflictError) as refused:
            ops.add(kb_store, "default", "kb1", Source(extra, "auto", None, "id"), options)
        message = str(refused.value)
        stamps = [part.split("sha256 ")[1][:12] for part in message.split("stamped ")[1:]]
        assert len(stamps) == 2 and stamps[0] != stamps[1]  # both stamps named, and they differ
        assert "kb reembed" in message and "differs in model_sha256" in message
        with pytest.raises(ConflictError, match="search refused"):
            ops.search(kb_store, "default", "kb1", "more", 3, None, False, options.engine)
    finally:
        weights.write_bytes(original)


def test_folder_of_files_chunking_none_and_a_10mb_document(kb_store: Store, tmp_path: Path,
                                                            options: ops.BuildOptions) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text("# Title\n\n" + "protein kinase " * 400, encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("short note", encoding="utf-8")
    (folder / "huge.txt").write_text("x " * (5 * 1024 * 1024), encoding="utf-8")  # 10 MB
    (folder / "bad.txt").write_bytes(b"\xff\xfe not utf-8")
    (folder / "image.png").write_bytes(b"\x89PNG")
    report = ops.create(kb_store, "default", "files", "ep", Source(folder), {"mode": "none", "overlap": 0}, options,
                        tmp_path / "data")
    assert "truncated (--chunking none): 1 document(s): a.md" in report
    assert "rejected: 1 document(s)" in report and "over the limit of 4,194,304" in report
    _, version = kb_store.current_kb_version("default", "files")
    rows = {str(r["doc_id"]): r for r in _chunks(Path(version.path))}
    assert sorted(rows) == ["a.md", "sub/b.txt"]
    assert rows["a.md"]["text"] == (folder / "a.md").read_text() and rows["a.md"]["truncated"]
    assert json.loads(str(rows["sub/b.txt"]["metadata"])) == {"path": "sub/b.txt"}


@pytest.mark.slow  # five CLI processes (a model load each)
def test_the_cli_lists_shows_and_searches(kb_store: Store, tmp_path: Path, options: ops.BuildOptions) -> None:
    from tests.batch_embed.conftest import run_cli

    _create(kb_store, tmp_path, options, long_documents(6))
    flags = ["--data-dir", str(tmp_path / "data")]
    listed = run_cli("kb", "list", *flags)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [{"name": "kb1", "project": "default", "store": "embedded", "version": 1}]
    shown = json.loads(run_cli("kb", "show", "kb1", *flags).stdout)
    assert shown["versions"][0]["stamp"]["chunking"] == CHUNKING and shown["versions"][0]["documents"] == 6
    found = run_cli("kb", "search", "kb1", "protein kinase", "-k", "3", "--by-document", "--json", *flags)
    assert found.returncode == 0, found.stderr
    cli = [h["document_id"] for h in json.loads(found.stdout)["hits"]]
    assert cli == [h.doc_id for h in ops.search(kb_store, "default", "kb1", "protein kinase", 3, None, True,
                                                options.engine)]
    refused = run_cli("kb", "search", "kb1", "x", "-k", "0", *flags)
    assert refused.returncode == 2 and "'k' must be an integer from 1 to 1000" in refused.stderr
    gone = run_cli("kb", "delete", "kb1", "--document", "doc-0", *flags)
    assert gone.returncode == 0 and "doc-0" in gone.stdout, gone.stderr
