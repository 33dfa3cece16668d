"""The knowledge-base operations the CLI (and the benchmark) run: create, add, search, reembed, delete.

Each works on the control store directly (``--data-dir`` / ``--store``, as ``embed-corpus --job-id`` does) and
runs its embedding in this process, resumably: rerunning the same command after a crash or Ctrl-C continues.
``create`` and ``reembed`` also run as a server's knowledge-base job (``--job-id``: the same functions under the
job's lifecycle handle, :mod:`.commands`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e5studio.control.knowledge_bases import VERSION_BUILDING, VERSION_FAILED, KnowledgeBase
from e5studio.control.store import Store
from e5studio.errors import ConflictError, InputError, NotFoundError
from e5studio.jobs.batch_embed.summary import EmbedCorpusResult
from e5studio.jobs.kb.build import (
    INPUTS_DIR,
    Source,
    check_stamp,
    engine_for,
    reconstruct_documents,
    run_batch,
    stamp_for,
    table_name,
    version_folder,
)
from e5studio.jobs.lifecycle import JobHandle
from e5studio.jobspec.layout import REJECTS_FILE
from e5studio.retrieval.kb_vectors import ChunkHit, EmbeddedChunks, PgvectorChunks, SearchRequest, check_request
from e5studio.settings import EngineSettings


@dataclass(frozen=True)
class BuildOptions:
    engine: EngineSettings  # device, threads ... (the model and precision come from the endpoint)
    window_size: int = 1000
    max_document_bytes: int = 4 * 1024 * 1024
    progress: bool = True
    workers: int | None = None


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def report(kb: KnowledgeBase, result: EmbedCorpusResult) -> str:
    m, run = result.manifest, result.run
    lines = [f"kb {kb.name}: this batch {m['count']:,} chunk(s) -> {result.output}",
             f"  this run: {run['passages']:,} chunks, {run['tokens']:,} tokens in {run['seconds']:.1f} s "
             f"({run['tokens_per_s']:,.0f} tokens/s)"]
    if m["rejects"]["count"]:
        first = m["rejects"]["first"]
        lines.append(f"  rejected: {m['rejects']['count']:,} document(s) -> {result.output / REJECTS_FILE} "
                     f"(first: line {first['line']}: {first['reason']})")
    truncated = truncated_documents(result.output)
    if truncated:
        lines.append(f"  truncated (--chunking none): {len(truncated):,} document(s): "
                     + ", ".join(truncated[:10]) + (" ..." if len(truncated) > 10 else ""))
    return "\n".join(lines)


def truncated_documents(output: Path) -> list[str]:
    import pyarrow.parquet as pq

    from e5studio.jobs.batch_embed.writer import read_manifest

    found: list[str] = []
    for entry in (read_manifest(output) or {}).get("shards", []):
        if entry.get("file"):
            table = pq.read_table(str(output / entry["file"]), columns=["doc_id", "truncated"])
            found += [d for d, t in zip(table.column("doc_id").to_pylist(), table.column("truncated").to_pylist(),
                                        strict=True) if t]
    return found


def create(store: Store, project: str, name: str, endpoint_ref: str, source: Source, chunking: dict[str, Any],
           options: BuildOptions, data_dir: Path, store_url: str = "", description: str = "",
           handle: JobHandle | None = None) -> str:
    """Create the knowledge base (unless recorded already, with no version yet: the server's form records it
    before its job starts) and embed its documents as version 1; a rerun continues a crashed run. ``handle``:
    the job this runs as (its record gets the progress and the version; the caller ends it)."""
    try:
        kb = store.get_kb(project, name)
    except NotFoundError:
        kb = store.create_kb(project, name, endpoint_ref, chunking=chunking, store_url=store_url,
                             text_field=source.text_field or "contents", id_field=source.id_field or "",
                             description=description)
    else:
        if kb.current_version:
            raise ConflictError(f"knowledge base {name!r} already exists; add documents with `e5studio kb add`")
    endpoint = store.get_endpoint_by_id(kb.endpoint_id)
    engine = engine_for(endpoint, options.engine)
    versions = [v for v in store.kb_versions(kb.id) if v.status in (VERSION_BUILDING, VERSION_FAILED)]
    if versions:
        version = versions[-1]
        if version.status == VERSION_FAILED:
            store.update_kb_version(version.id, status=VERSION_BUILDING, reason="")
        check_stamp(version, endpoint, engine, "continuing the build")
        _say(f"kb {name}: continuing the version being built")
    else:
        stamp = stamp_for(endpoint, engine, kb.chunking)
        version = store.add_kb_version(kb.id, endpoint.id, stamp, lambda n: version_folder(data_dir, kb.id, n),
                                       lambda n: table_name(kb.id, n))
    _say(f"kb {name}: embedding {source.path} with endpoint {endpoint.name} ({endpoint.model})")
    result = _build(store, kb, version, source, engine, options, handle)
    store.complete_kb_version(kb.id, version.version)
    return report(kb, result)


def _build(store: Store, kb: KnowledgeBase, version: Any, source: Any, engine: EngineSettings,
           options: BuildOptions, handle: JobHandle | None) -> EmbedCorpusResult:
    """The version's first batch (batch 0: a rerun continues it, or only finishes what a crash left after it)."""
    if handle is not None:
        handle.note({"kb": kb.name, "kb_version": version.version})
    try:
        return run_batch(store, kb, version, source, engine, window_size=options.window_size,
                         max_document_bytes=options.max_document_bytes, progress=options.progress,
                         workers=options.workers, handle=handle, batch=0)
    except (InputError, ConflictError) as exc:
        store.update_kb_version(version.id, status=VERSION_FAILED, reason=str(exc)[:500])
        raise


def add(store: Store, project: str, name: str, source: Source, options: BuildOptions) -> str:
    """Append documents to the current version (a new batch, resumable); their ids must be new."""
    kb, version = store.current_kb_version(project, name)
    if any(v.status == VERSION_BUILDING for v in store.kb_versions(kb.id)):
        raise ConflictError(f"a new version of {name!r} is being built (kb reembed): add documents after it "
                            "finished, so none is left out of it")
    endpoint = store.get_endpoint_by_id(version.endpoint_id)
    engine = engine_for(endpoint, options.engine)
    check_stamp(version, endpoint, engine, "kb add")
    result = run_batch(store, kb, version, source, engine, window_size=options.window_size,
                       max_document_bytes=options.max_document_bytes, progress=options.progress,
                       workers=options.workers)
    return report(kb, result)


class _Rebuilt:
    """The source of a re-embedding: the current version's documents, rebuilt from their chunks."""

    def __init__(self, folder: Path) -> None:
        self.path = folder

    def spec(self, inputs: Path, batch: int) -> Any:
        return reconstruct_documents(self.path, inputs / f"{batch:04d}.jsonl")


def reembed(store: Store, project: str, name: str, endpoint_ref: str | None, options: BuildOptions,
            data_dir: Path, handle: JobHandle | None = None) -> str:
    """Build the next version with ``endpoint_ref``'s model (default: the knowledge base's endpoint) beside the
    current one; searches switch to it atomically once it is complete. A rerun continues a crashed one.
    ``handle``: the job this runs as (as :func:`create`)."""
    kb, current = store.current_kb_version(project, name)
    building = [v for v in store.kb_versions(kb.id) if v.status in (VERSION_BUILDING, VERSION_FAILED)
                and v.version > current.version]
    if building:
        version = building[-1]
        endpoint = store.get_endpoint_by_id(version.endpoint_id)
        engine = engine_for(endpoint, options.engine)
        store.update_kb_version(version.id, status=VERSION_BUILDING, reason="")
        _say(f"kb {name}: continuing version {version.version}")
    else:
        endpoint = store.get_endpoint(kb.project_id, endpoint_ref) if endpoint_ref else \
            store.get_endpoint_by_id(kb.endpoint_id)
        engine = engine_for(endpoint, options.engine)
        stamp = stamp_for(endpoint, engine, kb.chunking)
        version = store.add_kb_version(kb.id, endpoint.id, stamp, lambda n: version_folder(data_dir, kb.id, n),
                                       lambda n: table_name(kb.id, n))
        _say(f"kb {name}: building version {version.version} with endpoint {endpoint.name} ({endpoint.model}); "
             f"searches use version {current.version} until it is complete")
    result = _build(store, kb, version, _Rebuilt(Path(current.path)), engine, options, handle)
    store.complete_kb_version(kb.id, version.version)
    return report(kb, result) + f"\n  searches now use version {version.version} (version {current.version} " \
                                f"kept until deleted: e5studio kb delete {name} --version {current.version})"


def search(store: Store, project: str, name: str, query: str, k: int, filter: dict[str, Any] | None,
           by_document: bool, base: EngineSettings) -> list[ChunkHit]:
    """Embed ``query`` (with ``query: ``) by the current version's model, refused if it is not the stamped one,
    and search that version."""
    from e5studio.engine.embedder import Embedder

    kb, version = store.current_kb_version(project, name)
    k, filter, by_document = check_request(k, filter, by_document, version.fields)
    if not query.strip():
        raise InputError("the query is empty")
    endpoint = store.get_endpoint_by_id(version.endpoint_id)
    engine = engine_for(endpoint, base)
    check_stamp(version, endpoint, engine, "search")
    vector = Embedder.load(engine).embed([query], "query")[0]
    request = SearchRequest(vector, k, filter, by_document)
    if kb.store_url:
        return PgvectorChunks().search(kb.store_url, version.table_name, request)
    return EmbeddedChunks.load(Path(version.path)).search(request)


def delete_kb(store: Store, project: str, name: str) -> str:
    from e5studio.jobs.kb.build import remove_version_files

    kb = store.get_kb(project, name)
    versions = store.delete_kb(kb.id)
    for version in versions:
        remove_version_files(kb, version)
    return f"kb {name}: deleted ({len(versions)} version(s))"


def delete_version(store: Store, project: str, name: str, number: int) -> str:
    from e5studio.jobs.kb.build import remove_version_files

    kb = store.get_kb(project, name)
    version = store.get_kb_version(kb.id, number)
    store.delete_kb_version(kb.id, number)
    remove_version_files(kb, version)
    return f"kb {name}: version {number} deleted"


def delete_document(store: Store, project: str, name: str, doc_id: str) -> str:
    from e5studio.jobs.kb.build import delete_document as delete

    kb, version = store.current_kb_version(project, name)
    removed = delete(store, kb, version, doc_id)
    return f"kb {name}: document {doc_id!r} deleted ({removed} chunk(s))"


__all__ = ["INPUTS_DIR", "BuildOptions", "add", "create", "delete_document", "delete_kb", "delete_version", "reembed",
           "search"]
