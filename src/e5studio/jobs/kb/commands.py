"""CLI: ``e5studio kb create|add|list|show|search|reembed|delete`` (knowledge bases).

Only argparse and the standard library at import time; the work is in :mod:`.ops`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from e5studio.engine.flags import engine_settings
from e5studio.errors import InputError


def _store(args: argparse.Namespace) -> Any:
    from e5studio.control.database import store_target
    from e5studio.control.store import Store

    return Store(store_target(args.store, args.data_dir))


def _options(args: argparse.Namespace) -> Any:
    from e5studio.jobs.kb.ops import BuildOptions

    if args.max_document_mb <= 0:
        raise InputError("--max-document-mb must be positive")
    return BuildOptions(engine=engine_settings(args, "unused"), window_size=args.window_size,
                        max_document_bytes=int(args.max_document_mb * 1024 * 1024), progress=not args.no_progress,
                        workers=args.workers)


def _source(args: argparse.Namespace, store: Any) -> Any:
    from e5studio.jobs.kb.build import Source

    if bool(args.data) == bool(getattr(args, "dataset", None)):
        raise InputError("give the documents with --data FILE|FOLDER or --dataset NAME (one of them)")
    if getattr(args, "dataset", None):
        from e5studio.jobspec.layout import PASSAGES_FILE

        dataset = store.get_dataset(args.dataset)
        return Source(Path(dataset.path) / PASSAGES_FILE, "jsonl", "contents", None)
    path = Path(args.data)
    if not path.exists():
        raise InputError(f"--data {path}: no such file or folder")
    return Source(path, args.format, args.text_field, args.id_field)


def _build(args: argparse.Namespace, store: Any, handle: Any = None) -> str:
    """``kb create`` or ``kb reembed`` in this process (under ``handle``, the server's job, where given)."""
    from e5studio.jobs.kb import ops

    if args.kb_action == "reembed":
        return ops.reembed(store, args.project, args.name, args.endpoint, _options(args), Path(args.data_dir), handle)
    chunking = {"mode": args.chunking, "chunk_tokens": args.chunk_tokens, "overlap": args.overlap}
    from e5studio.jobs.batch_embed.chunking import ChunkPolicy

    ChunkPolicy.from_json(chunking)  # checked before anything is recorded
    return ops.create(store, args.project, args.name, args.endpoint, _source(args, store), chunking, _options(args),
                      Path(args.data_dir), args.store_url or "", args.description, handle)


def _run_job(args: argparse.Namespace, store: Any) -> int:
    """``--job-id``: the knowledge-base job the server recorded, taken over by this process (its lifecycle
    handle: progress on its record and its folder's progress.json, its end); a rerun continues it."""
    from e5studio.control.job_records import KIND_KB
    from e5studio.jobs.lifecycle import Expected, JobHandle
    from e5studio.jobspec.layout import JOBS_DIR, PROGRESS_FILE
    from e5studio.jobspec.progress import Progress

    output = Path(args.data_dir).resolve() / JOBS_DIR / args.job_id
    display = Progress(f"kb {args.name}", enabled=not args.no_progress, status_file=output / PROGRESS_FILE)
    handle = JobHandle.take(store, args.job_id, Expected(KIND_KB, str(output), None, None), resume=False,
                            progress=display)
    if handle is None:
        print(f"e5studio: job {args.job_id} was cancelled before it started; nothing to do", file=sys.stderr)
        return 0
    done = store.get_job(args.job_id).metrics.get("kb_version")
    with handle.running(lambda how: f"interrupted ({how}); resume continues the version after its last complete "
                                    "shard"):
        kb = store.get_kb(args.project, args.name)
        if done is not None and kb.current_version == done:  # complete before its end was recorded
            text = f"kb {kb.name}: version {done} is complete; searches use it"
        else:
            text = _build(args, store, handle)
        kb, version = store.current_kb_version(args.project, args.name)
        handle.finish(None, {"kb_version": version.version, "documents": version.documents,
                             "chunks": version.chunks})
    print(text)
    return 0


def cmd_kb(args: argparse.Namespace) -> int:
    from e5studio.jobs.kb import ops

    with _store(args) as store:
        action = args.kb_action
        if action in ("create", "reembed"):
            if args.job_id is not None:
                return _run_job(args, store)
            print(_build(args, store))
        elif action == "add":
            print(ops.add(store, args.project, args.name, _source(args, store), _options(args)))
        elif action == "list":
            rows = [{"name": kb.name, "project": kb.project_name, "store": kb.store_kind,
                     "version": kb.current_version} for kb in store.list_kbs(args.project)]
            print(json.dumps(rows, indent=2))
        elif action == "show":
            kb = store.get_kb(args.project, args.name)
            versions = [{k: v for k, v in vars(version).items() if k not in ("kb_id",)}
                        for version in store.kb_versions(kb.id)]
            print(json.dumps({**vars(kb), "versions": versions}, indent=2))
        elif action == "search":
            filt = json.loads(args.filter) if args.filter else None
            hits = ops.search(store, args.project, args.name, args.query, args.k, filt, args.by_document,
                              engine_settings(args, "unused"))
            if args.json:
                print(json.dumps({"hits": [h.to_json() for h in hits]}, indent=1, ensure_ascii=False))
            for rank, hit in enumerate([] if args.json else hits, start=1):
                text = " ".join(hit.text.split())[:100]
                print(f"{rank:3d}  {hit.score:.4f}  {hit.doc_id}#{hit.chunk} [{hit.start}:{hit.end}]  {text}")
        elif action == "delete":
            if args.document is not None:
                print(ops.delete_document(store, args.project, args.name, args.document))
            elif args.version is not None:
                print(ops.delete_version(store, args.project, args.name, args.version))
            else:
                print(ops.delete_kb(store, args.project, args.name))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", default="default", help="the project (name or id; default: default)")
    p.add_argument("--data-dir", default=".e5studio", help="the server's data directory (default ./.e5studio): the "
                                                            "store and the knowledge bases' vectors")
    p.add_argument("--store", default=None, metavar="URL",
                   help="the control store (default $E5STUDIO_STORE, else DATA_DIR/e5studio.db)")


def _job_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job-id", default=None, help="run as the server's recorded job of this id (what its job "
                                                  "runner starts; the web UI and the admin API submit them)")


def _engine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    for name in ("dtype", "max_batch_tokens", "max_length", "cpu_runtime", "model"):
        p.set_defaults(**{name: None})


def _build_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window-size", type=int, default=1000, help="documents per window = per shard (default 1000)")
    p.add_argument("--max-document-mb", type=float, default=4.0,
                   help="documents larger than this (UTF-8) are rejected, named with their line (default 4)")
    p.add_argument("--workers", type=int, default=None, help="micro-batches embedded in parallel (default: one "
                                                              "per CPU core)")
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    _engine(p)


def _data_flags(p: argparse.ArgumentParser, dataset: bool) -> None:
    p.add_argument("--data", default=None, help="JSONL, Parquet or plain-text file, or a folder of .txt/.md files")
    if dataset:
        p.add_argument("--dataset", default=None, help="a recorded dataset's passages.jsonl (name or name@version)")
    p.add_argument("--format", choices=["auto", "jsonl", "parquet", "text"], default="auto")
    p.add_argument("--text-field", default=None, help="JSON field / Parquet column of the text (default contents)")
    p.add_argument("--id-field", default=None, help="JSON field / Parquet column of the document id (default: the "
                                                    "line number); the other fields are kept as metadata")


def add_parsers(sub: Any) -> None:
    kb = sub.add_parser("kb", help="knowledge bases: documents -> chunks -> stamped vectors, search, re-embed",
                        description="A knowledge base is a project's documents embedded by an endpoint's model: "
                                    "chunked so nothing is cut, stamped with what made the vectors, searchable "
                                    "(CLI, HTTP), re-embedded beside the current version when the model changes.")
    ksub = kb.add_subparsers(dest="kb_action", required=True)
    create = ksub.add_parser("create", help="create a knowledge base and embed its documents (resumable)")
    create.add_argument("name")
    create.add_argument("--endpoint", required=True, help="the endpoint whose model embeds it (name or id)")
    _data_flags(create, dataset=True)
    create.add_argument("--chunking", choices=["tokens", "none"], default="tokens",
                        help="tokens (default): split long documents into chunks, nothing lost; none: truncate "
                             "at the model's window and report which documents were cut")
    create.add_argument("--chunk-tokens", type=int, default=None,
                        help="word pieces per chunk (default: all that fit the window with the prefix)")
    create.add_argument("--overlap", type=int, default=32, help="word pieces shared by consecutive chunks "
                                                                 "(default 32, at most a quarter of the default chunk)")
    create.add_argument("--store-url", default=None, metavar="URL",
                        help="keep the vectors in PostgreSQL + pgvector (postgres://USER@HOST/DB, password in "
                             "PGPASSWORD or ~/.pgpass); default: Parquet + exact search in the data dir")
    create.add_argument("--description", default="")
    _build_flags(create)
    _common(create)
    _job_flag(create)
    add = ksub.add_parser("add", help="append documents (new ids) to a knowledge base (resumable)")
    add.add_argument("name")
    _data_flags(add, dataset=True)
    _build_flags(add)
    _common(add)
    reembed = ksub.add_parser("reembed", help="build a new version with the endpoint's (new) model; searches "
                                              "switch atomically when it is complete")
    reembed.add_argument("name")
    reembed.add_argument("--endpoint", default=None, help="embed with this endpoint (default: the knowledge "
                                                          "base's own)")
    _build_flags(reembed)
    _common(reembed)
    _job_flag(reembed)
    listing = ksub.add_parser("list", help="knowledge bases (of --project, else all)")
    _common(listing)
    listing.set_defaults(project=None)
    show = ksub.add_parser("show", help="a knowledge base, its versions and their stamps")
    show.add_argument("name")
    _common(show)
    search = ksub.add_parser("search", help="the chunks nearest a query (with 'query: ')")
    search.add_argument("name")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=10, help="hits (default 10, at most 1000)")
    search.add_argument("--filter", default=None, help='metadata equalities as JSON, e.g. \'{"lang": "en"}\'')
    search.add_argument("--by-document", action="store_true", help="the best chunk of each document")
    search.add_argument("--json", action="store_true", help="print JSON")
    _engine(search)
    _common(search)
    delete = ksub.add_parser("delete", help="delete a knowledge base, one of its versions, or one document")
    delete.add_argument("name")
    delete.add_argument("--document", default=None, help="delete only this document id's chunks")
    delete.add_argument("--version", type=int, default=None, help="delete only this (not current) version")
    _common(delete)
    kb.set_defaults(func=cmd_kb)
