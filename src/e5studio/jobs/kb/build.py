"""Building a knowledge base version: documents -> chunks -> stamped vectors, on the embed-corpus machinery.

A version folder (``<data dir>/kb/<kb id>/v<N>``) holds numbered batches, each an embed-corpus output
(``batches/0000`` from ``kb create`` or ``kb reembed``, one more per ``kb add``) written with chunking on, so a
batch is resumable exactly as ``embed-corpus`` is (windows, manifest, atomic shards): rerunning the command
after any crash continues the batch with no duplicate and no missing chunk. Inputs that are not one file (a
folder of text/Markdown files, a re-embedding's documents) are first written once, atomically, to
``inputs/NNNN.jsonl``, so a rerun reads the same bytes. After a batch is complete its chunks are upserted into
the version's PostgreSQL table (for a pgvector knowledge base) and the version's counts are refreshed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e5studio.control.knowledge_bases import KbVersion, KnowledgeBase
from e5studio.control.store import Endpoint, Store
from e5studio.engine.model_identity import model_identity
from e5studio.errors import InputError
from e5studio.jobs.batch_embed.chunking import ChunkPolicy
from e5studio.jobs.batch_embed.reader import InputSpec
from e5studio.jobs.batch_embed.runner import EmbedCorpusSettings, run_job
from e5studio.jobs.batch_embed.summary import EmbedCorpusResult
from e5studio.jobs.batch_embed.writer import atomic_write_bytes, read_manifest
from e5studio.jobs.kb import pgvector
from e5studio.jobs.lifecycle import JobHandle
from e5studio.jobspec.layout import PROGRESS_FILE
from e5studio.jobspec.progress import Progress
from e5studio.retrieval.kb_stamp import check_model, endpoint_fields, make_stamp
from e5studio.retrieval.kb_vectors import BATCHES_DIR, DELETED_FILE, complete_batches, read_deleted
from e5studio.settings import EngineSettings

KB_DIR = "kb"
INPUTS_DIR = "inputs"
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".text", ".rst")
ID_FIELD = "e5studio.id"  # the fields of an input this module writes (a folder's files, a re-embedding)
TEXT_FIELD = "e5studio.text"


def version_folder(data_dir: Path, kb_id: str, version: int) -> Path:
    return Path(data_dir).resolve() / KB_DIR / kb_id / f"v{version}"


def table_name(kb_id: str, version: int) -> str:
    return f"e5kb_{kb_id}_v{version}"


def engine_for(endpoint: Endpoint, base: EngineSettings) -> EngineSettings:
    """The engine of ``endpoint``'s model and precision, with this command's device and threads."""
    return dataclasses.replace(base, model=endpoint.model, precision=endpoint.precision)


def stamp_for(endpoint: Endpoint, engine: EngineSettings, chunking: dict[str, Any]) -> dict[str, Any]:
    return make_stamp(model_identity(engine), engine.precision, chunking, endpoint_fields(endpoint))


@dataclass(frozen=True)
class Source:
    """Where a batch's documents come from: a file (JSONL, Parquet, text), a folder of text/Markdown files,
    or a recorded dataset's passages."""

    path: Path
    format: str = "auto"
    text_field: str | None = None
    id_field: str | None = None

    def spec(self, inputs: Path, batch: int) -> InputSpec:
        if self.path.is_dir():
            return _folder_input(self.path, inputs / f"{batch:04d}.jsonl")
        spec = InputSpec.create(self.path, self.format, self.text_field, self.id_field)
        return dataclasses.replace(spec, metadata=spec.format != "text")


def _folder_input(folder: Path, target: Path) -> InputSpec:
    """A folder's text/Markdown files as one JSONL input (id: the path inside the folder), written once."""
    if not target.is_file():
        lines: list[bytes] = []
        unreadable: list[str] = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
            relative = str(path.relative_to(folder))
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                unreadable.append(f"{relative}: {exc}")
                continue
            lines.append(json.dumps({ID_FIELD: relative, TEXT_FIELD: text, "path": relative},
                                    ensure_ascii=False).encode("utf-8") + b"\n")
        if not lines:
            raise InputError(f"{folder}: no readable text or Markdown files ({', '.join(TEXT_SUFFIXES)})"
                             + (f"; unreadable: {'; '.join(unreadable[:5])}" if unreadable else ""))
        if unreadable:
            print(f"kb: skipped {len(unreadable)} unreadable file(s): {'; '.join(unreadable[:10])}", flush=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, b"".join(lines))
    spec = InputSpec.create(target, "jsonl", TEXT_FIELD, ID_FIELD)
    return dataclasses.replace(spec, metadata=True)


def _batch_number(folder: Path) -> int:
    """The batch a new run writes: the first one not complete (a crashed run's), else the next."""
    root = folder / BATCHES_DIR
    numbers = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
    for n in numbers:
        manifest = read_manifest(root / f"{n:04d}")
        if manifest is None or manifest.get("status") != "complete":
            return n
    return numbers[-1] + 1 if numbers else 0


def _chunk_columns(folder: Path, columns: list[str]) -> Iterator[tuple[int, dict[str, list[Any]]]]:
    import pyarrow.parquet as pq

    for batch, output in complete_batches(folder):
        manifest = read_manifest(output) or {}
        for entry in manifest.get("shards", []):
            if entry.get("file"):
                table = pq.read_table(str(output / entry["file"]), columns=columns)
                yield batch, {name: table.column(name).to_pylist() for name in columns}


def live_documents(folder: Path, before: int | None = None) -> tuple[set[str], int, set[str]]:
    """(live document ids, live chunks, metadata field names) of the complete batches (below ``before``)."""
    deleted = read_deleted(folder)
    docs: set[str] = set()
    chunks = 0
    fields: set[str] = set()
    for batch, cols in _chunk_columns(folder, ["doc_id", "metadata"]):
        if before is not None and batch >= before:
            continue
        for doc_id, metadata in zip(cols["doc_id"], cols["metadata"], strict=True):
            if deleted.get(doc_id, -1) < batch:
                docs.add(doc_id)
                chunks += 1
                fields.update(json.loads(metadata or "{}"))
    return docs, chunks, fields


def run_batch(store: Store, kb: KnowledgeBase, version: KbVersion, source: Source, engine: EngineSettings, *,
              window_size: int, max_document_bytes: int, progress: bool, workers: int | None = None,
              handle: JobHandle | None = None, batch: int | None = None) -> EmbedCorpusResult:
    """Embed ``source`` as the version's batch ``batch`` (default: the next one, or the one a crash left), then
    upsert it into PostgreSQL (pgvector knowledge bases) and refresh the version's counts.

    ``handle``: the job this batch is part of (its record gets the batch's progress; the caller ends the job);
    without one the progress goes to stderr and the batch's ``progress.json`` (the knowledge base's page)."""
    folder = Path(version.path)
    batch = _batch_number(folder) if batch is None else batch
    spec = source.spec(folder / INPUTS_DIR, batch)
    taken, _, _ = live_documents(folder, before=batch)
    policy = dataclasses.replace(ChunkPolicy.from_json(kb.chunking), max_document_bytes=max_document_bytes)
    settings = EmbedCorpusSettings(input=spec, output=folder / BATCHES_DIR / f"{batch:04d}", engine=engine,
                                   input_type="passage", window_size=window_size, progress=progress,
                                   workers=workers, chunking=policy, taken_ids=frozenset(taken))
    whole = handle or JobHandle.unrecorded(Progress(f"kb {kb.name}", enabled=progress,
                                                    status_file=settings.output / PROGRESS_FILE))
    result = run_job(settings, handle=whole.part())
    if kb.store_url:
        pgvector.write_batch(kb.store_url, version.table_name, settings.output, version.stamp, kb.name,
                             version.version, read_deleted(folder), batch)
    refresh_counts(store, version)
    return result


def refresh_counts(store: Store, version: KbVersion) -> tuple[int, int]:
    docs, chunks, fields = live_documents(Path(version.path))
    store.update_kb_version(version.id, documents=len(docs), chunks=chunks, fields=sorted(fields), bump=True)
    return len(docs), chunks


def check_stamp(version: KbVersion, endpoint: Endpoint, engine: EngineSettings, action: str) -> dict[str, Any]:
    """The stamp this model gives; ConflictError naming both when it differs from the version's."""
    return check_model(version.stamp, model_identity(engine), engine.precision, endpoint_fields(endpoint), action)


def delete_document(store: Store, kb: KnowledgeBase, version: KbVersion, doc_id: str) -> int:
    """Delete a document's chunks from the version (the embedded folder and PostgreSQL); returns how many
    chunks it had. NotFound-like InputError when it has none."""
    folder = Path(version.path)
    live, _, _ = live_documents(folder)
    if doc_id not in live:
        raise InputError(f"document {doc_id!r} is not in knowledge base {kb.name!r} (version {version.version})")
    deleted = read_deleted(folder)
    last = max((b for b, _ in complete_batches(folder)), default=0)
    deleted[doc_id] = last
    atomic_write_bytes(folder / DELETED_FILE, json.dumps(deleted, ensure_ascii=False).encode("utf-8"))
    removed = 0
    if kb.store_url:
        removed = pgvector.delete_document(kb.store_url, version.table_name, doc_id)
    before = version.chunks
    _, chunks = refresh_counts(store, version)
    return removed or before - chunks


def remove_version_files(kb: KnowledgeBase, version: KbVersion) -> None:
    if kb.store_url:
        pgvector.drop_table(kb.store_url, version.table_name)
    shutil.rmtree(version.path, ignore_errors=True)


def reconstruct_documents(folder: Path, target: Path) -> InputSpec:
    """The live documents of a version, rebuilt exactly from their chunks (their offsets cover every
    character), as one JSONL input with their metadata; written once."""
    if not target.is_file():
        deleted = read_deleted(folder)
        pieces: dict[str, list[tuple[int, int, int, str, str]]] = {}
        order: list[str] = []
        for batch, cols in _chunk_columns(folder, ["doc_id", "chunk", "start", "end", "text", "metadata"]):
            for doc_id, chunk, start, end, text, metadata in zip(
                    cols["doc_id"], cols["chunk"], cols["start"], cols["end"], cols["text"], cols["metadata"],
                    strict=True):
                if deleted.get(doc_id, -1) < batch:
                    if doc_id not in pieces:
                        order.append(doc_id)
                    pieces.setdefault(doc_id, []).append((chunk, start, end, text, metadata))
        lines = []
        for doc_id in order:
            chunks = sorted(pieces[doc_id])
            text, covered = "", 0
            for _, start, end, piece, _ in chunks:
                text += piece[covered - start:] if covered > start else piece
                covered = max(covered, end)
            fields = json.loads(chunks[0][4] or "{}")
            lines.append(json.dumps({**fields, ID_FIELD: doc_id, TEXT_FIELD: text}, ensure_ascii=False)
                         .encode("utf-8") + b"\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, b"".join(lines))
    return dataclasses.replace(InputSpec.create(target, "jsonl", TEXT_FIELD, ID_FIELD), metadata=True)
