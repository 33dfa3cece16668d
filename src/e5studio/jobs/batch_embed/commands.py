"""CLI commands: ``e5studio embed-corpus``, ``e5studio search`` and ``e5studio eval``.

Only argparse and the standard library at import time (``e5studio --help`` stays fast); torch, pyarrow,
psycopg and ray are imported inside the commands that use them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e5studio.engine.flags import add_engine_flags, engine_settings
from e5studio.errors import InputError
from e5studio.jobspec.batch_params import WINDOW_SIZE, WORKERS
from e5studio.jobspec.params import add_arguments
from e5studio.settings import DEFAULT_MODEL

if TYPE_CHECKING:
    from e5studio.jobs.batch_embed.runner import EmbedCorpusSettings, WindowExecutor
    from e5studio.jobs.lifecycle import JobHandle


def _add_engine_flags(parser: argparse.ArgumentParser, model_required: bool) -> None:
    add_engine_flags(parser, "hub id, alias (e5-large-v2, all-minilm-l6-v2, ...) or local directory"
                     + ("" if model_required else " (default: the model the index was built with)"), model_required)


def _input_type(value: str) -> str | None:
    return None if value == "none" else value


# ---------------------------------------------------------------------------------------------- embed-corpus


def cmd_embed_corpus(args: argparse.Namespace) -> int:
    from e5studio.jobs.batch_embed.reader import InputSpec
    from e5studio.jobs.batch_embed.runner import EmbedCorpusSettings, local_executor
    from e5studio.jobs.batch_embed.sinks import PostgresSink

    settings = EmbedCorpusSettings(
        input=InputSpec.create(args.input, args.format, args.text_field, args.id_field),
        output=Path(args.output), engine=engine_settings(args), input_type=_input_type(args.input_type),
        window_size=args.window_size, bad_records=args.bad_records, overwrite=args.overwrite,
        progress=not args.no_progress, workers=args.workers if args.engine == "local" else None)
    sinks = [PostgresSink(url, args.table) for url in args.sink]
    executor: WindowExecutor = local_executor
    if args.engine == "ray":
        from e5studio.jobs.batch_embed.ray_executor import RayExecutor, RayOptions

        executor = RayExecutor(RayOptions(address=args.ray_address, workers=args.workers or 1,
                                      gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                                      num_cpus=args.ray_num_cpus))
    if settings.progress:  # the first line at once; the model loads next (seconds for E5 Large)
        print(f"embed-corpus: {args.input} -> {args.output}: loading {settings.engine.model}", file=sys.stderr,
              flush=True)
    if args.job_id is not None:
        return _run_recorded(args, settings, executor, sinks)
    return _run_under(None, settings, executor, sinks, args.output)


def _run_recorded(args: argparse.Namespace, settings: EmbedCorpusSettings, executor: WindowExecutor,
                  sinks: list[Any]) -> int:
    """``--job-id``: the job the server recorded, taken over by this process and ended through its handle."""
    from e5studio.control.database import store_target
    from e5studio.control.job_records import KIND_BATCH_EMBED
    from e5studio.control.store import Store
    from e5studio.jobs.batch_embed.progress import display
    from e5studio.jobs.lifecycle import Expected, JobHandle

    with Store(store_target(args.store, args.data_dir)) as store:
        expected = Expected(kind=KIND_BATCH_EMBED, output=str(settings.output.resolve().parent), dataset_id=None,
                            model=args.model)
        handle = JobHandle.take(store, args.job_id, expected, resume=False,
                                progress=display(settings.output, settings.progress))
        if handle is None:
            print(f"e5studio: job {args.job_id} was cancelled before it started; nothing to do", file=sys.stderr)
            return 0
        return _run_under(handle, settings, executor, sinks, args.output)


def _run_under(handle: JobHandle | None, settings: EmbedCorpusSettings, executor: WindowExecutor,
               sinks: list[Any], output: str) -> int:
    """The run under its handle (unrecorded without ``--job-id``); what the command says at its end."""
    from e5studio.jobs.batch_embed.progress import display
    from e5studio.jobs.batch_embed.runner import run_job
    from e5studio.jobs.lifecycle import JobHandle

    handle = handle or JobHandle.unrecorded(display(settings.output, settings.progress))
    try:
        with handle.running(lambda how: f"interrupted ({how}); resume continues after the last complete shard"):
            result = run_job(settings, executor, sinks, handle)
    except KeyboardInterrupt:
        print(f"e5studio: interrupted; rerun the same command to continue {output}", file=sys.stderr)
        return 130
    print(result.summary())
    return 0


# ---------------------------------------------------------------------------------------------- search


def cmd_search(args: argparse.Namespace) -> int:
    from e5studio.engine.embedder import Embedder
    from e5studio.jobs.batch_embed.writer import read_manifest
    from e5studio.jobspec.layout import INDEX_DIR
    from e5studio.retrieval.index import ExactIndex

    folder = Path(args.index)
    manifest = read_manifest(folder)
    index_dir = folder / INDEX_DIR if manifest is not None else folder
    index = ExactIndex.open(index_dir)
    model = args.model or (manifest or {}).get("model", {}).get("path") or DEFAULT_MODEL
    max_length = args.max_length or (manifest or {}).get("model", {}).get("max_length")
    settings = engine_settings(args, model)
    if max_length and args.max_length is None:
        settings = dataclasses.replace(settings, max_length=max_length)
    embedder = Embedder.load(settings)
    if embedder.dim != index.dim:
        raise InputError(f"model {model} gives {embedder.dim}-dim vectors, the index has {index.dim}; "
                         "pass the --model the index was built with")
    queries = list(args.queries)
    vectors = embedder.embed(queries, _input_type(args.input_type))  # [q, d]
    results = index.search(vectors, args.k)
    if args.json:
        print(json.dumps([{"query": q, "hits": [{"rank": r + 1, "id": h.id, "score": round(h.score, 6)}
                                                 for r, h in enumerate(hits)]}
                          for q, hits in zip(queries, results, strict=True)], indent=1))
        return 0
    texts = _texts_for(manifest, {h.id for hits in results for h in hits}) if args.show_text else {}
    for q, hits in zip(queries, results, strict=True):
        print(f"query: {q}")
        for rank, hit in enumerate(hits, start=1):
            text = texts.get(hit.id)
            shown = f"  {text[:100]}" if text else ""
            print(f"{rank:4d}  {hit.score:.4f}  {hit.id}{shown}")
    return 0


def _texts_for(manifest: dict[str, Any] | None, ids: set[str]) -> dict[str, str]:
    """The input texts of ``ids`` (read again from the job's input, if it is still there)."""
    from e5studio.jobs.batch_embed.reader import InputSpec, iter_windows

    if manifest is None or not Path(manifest["input"]["path"]).is_file():
        return {}
    info = manifest["input"]
    spec = InputSpec(Path(info["path"]), info["format"], info.get("text_field") or "contents", info.get("id_field"))
    found: dict[str, str] = {}
    for window in iter_windows(spec, 10_000):
        for record in window.records:
            if record.id in ids:
                found[record.id] = record.text
        if len(found) == len(ids):
            break
    return found


# ---------------------------------------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> int:
    from e5studio.engine.embedder import Embedder
    from e5studio.engine.model_identity import model_identity
    from e5studio.jobs.corpus_index import index_corpus
    from e5studio.jobspec.progress import phase_lines
    from e5studio.retrieval.evaluate import EvalSettings, load_eval_set, run_eval

    query_prefix, passage_prefix = args.query_prefix, args.passage_prefix
    if args.no_prefixes:
        query_prefix = passage_prefix = ""
    engine = engine_settings(args)
    settings = EvalSettings(data=Path(args.data), split=args.split, query_prefix=query_prefix,
                            passage_prefix=passage_prefix, depth=args.depth, max_queries=args.max_queries)
    evalset = load_eval_set(settings.data, settings.split, settings.max_queries)  # cheap checks before the model
    identity = model_identity(engine)
    corpus = index_corpus(Path(args.index), identity, engine.precision, passage_prefix) if args.index else None
    if not args.no_progress:
        print(f"eval: {args.data}: loading {engine.model}", file=sys.stderr, flush=True)
    embedder = Embedder.load(engine)
    phases = {"passages": "embedding passages", "queries": "embedding queries", "scoring": "searching and scoring"}
    report = run_eval(embedder, settings, identity, phase_lines("eval", phases, not args.no_progress), corpus,
                      evalset)
    if args.index:
        report["index"] = str(Path(args.index).resolve())
    text = json.dumps(report, indent=1)
    if args.report:
        Path(args.report).write_text(text + "\n")
    print(text)
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in report["metrics"].items())
    print(f"eval {Path(args.data).name} ({report['queries']} queries, {report['passages']} passages): {metrics}",
          file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- parsers


def add_parsers(sub: Any) -> None:
    """Add ``embed-corpus``, ``search`` and ``eval`` to the CLI's subparsers."""
    embed = sub.add_parser(
        "embed-corpus", help="embed a corpus into Parquet shards + manifest + search index (resumable)",
        description="Embed every passage of INPUT (passages.jsonl, any JSONL, Parquet, or plain text with one "
                    "passage per line) into OUTPUT: Parquet shards (id, text_sha256, embedding), manifest.json, "
                    "rejects.jsonl and an exact search index. Killed at any moment, the same command continues "
                    "where it stopped.")
    embed.add_argument("input", help="the corpus file")
    embed.add_argument("--output", "-o", required=True, help="output folder (created; reused to resume)")
    _add_engine_flags(embed, model_required=True)
    embed.add_argument("--format", choices=["auto", "jsonl", "parquet", "text"], default="auto",
                       help="input format (default: from the file suffix; .jsonl/.json, .parquet, else text)")
    embed.add_argument("--text-field", default=None, help="JSON field / Parquet column with the text "
                                                          "(default contents)")
    embed.add_argument("--id-field", default=None,
                       help="JSON field / Parquet column with the id (default: the 0-based line or row number)")
    embed.add_argument("--input-type", choices=["passage", "query", "none"], default="passage",
                       help="E5 prefix added where missing, never twice (default passage: 'passage: '); none: "
                            "texts as given")
    add_arguments(embed, [WINDOW_SIZE])
    embed.add_argument("--bad-records", choices=["skip", "fail"], default="skip",
                       help="skip: write each bad record (invalid JSON, missing text ...) with its line number to "
                            "OUTPUT/rejects.jsonl and go on (default); fail: stop with the list")
    embed.add_argument("--sink", action="append", default=[], metavar="URL",
                       help="also upsert into PostgreSQL + pgvector at this postgres:// URL (table with id, "
                            "text hash, vector(dim), HNSW cosine index); repeatable")
    embed.add_argument("--table", default="passages", help="table name for --sink (default passages)")
    embed.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local (default) or ray: Ray Data with an actor pool, one engine per actor")
    embed.add_argument("--ray-address", default=None,
                       help="with --engine ray: 'auto' or ray://HOST:10001 for a running cluster (default: start a "
                            "local Ray)")
    add_arguments(embed, [WORKERS])
    embed.add_argument("--gpus-per-worker", type=float, default=0.0, help="with --engine ray: GPUs per actor")
    embed.add_argument("--cpus-per-worker", type=float, default=1.0, help="with --engine ray: CPU cores per actor")
    embed.add_argument("--ray-num-cpus", type=int, default=None,
                       help="with --engine ray and no --ray-address: cores the local Ray may use")
    embed.add_argument("--overwrite", action="store_true", help="delete OUTPUT's previous results and start afresh")
    embed.add_argument("--no-progress", action="store_true", help="no progress bar")
    embed.add_argument("--job-id", default=None,
                       help="run the job recorded under this id (by the server, whose job folder holds OUTPUT): "
                            "its progress and result are recorded in the control store")
    embed.add_argument("--data-dir", default=".e5studio",
                       help="with --job-id: where the control store lives (default ./.e5studio)")
    embed.add_argument("--store", default=None, metavar="URL",
                       help="with --job-id: the control store (default $E5STUDIO_STORE, else DATA_DIR/e5studio.db)")
    embed.set_defaults(func=cmd_embed_corpus)

    search = sub.add_parser("search", help="nearest passages of a query in an embed-corpus output",
                            description="Embed each QUERY (with 'query: ' by default) and print the top k ids "
                                        "with their cosine scores from INDEX (an embed-corpus output folder).")
    search.add_argument("index", help="embed-corpus output folder (or its index/ folder)")
    search.add_argument("queries", nargs="+", metavar="QUERY")
    search.add_argument("-k", type=int, default=10, help="hits per query (default 10)")
    search.add_argument("--input-type", choices=["query", "passage", "none"], default="query",
                        help="E5 prefix added to the queries where missing (default query)")
    search.add_argument("--json", action="store_true", help="print JSON")
    search.add_argument("--show-text", action="store_true", help="show the passage texts (reads the input again)")
    _add_engine_flags(search, model_required=False)
    search.set_defaults(func=cmd_search)

    ev = sub.add_parser("eval", help="retrieval quality on a test collection: nDCG@10, MRR@10, Recall@100, MAP",
                        description="Embed DATA's passages and test queries, search exactly, score against the "
                                    "graded qrels; prints a JSON report. DATA has passages.jsonl, "
                                    "queries.<split>.jsonl and qrels.<split>.tsv (the layout of shared/data/*).")
    _add_engine_flags(ev, model_required=True)
    ev.add_argument("--data", required=True, help="test collection folder")
    ev.add_argument("--split", default="test", help="queries.<split>.jsonl / qrels.<split>.tsv (default test)")
    ev.add_argument("--query-prefix", default="query: ", help="added to queries (default 'query: '; '' for none)")
    ev.add_argument("--passage-prefix", default="passage: ",
                    help="added to passages (default 'passage: '; '' for none)")
    ev.add_argument("--no-prefixes", action="store_true",
                    help="texts as given, no prefixes (how MTEB runs non-E5 models such as MiniLM)")
    ev.add_argument("--depth", type=int, default=1000, help="passages retrieved per query (default 1000; MAP)")
    ev.add_argument("--max-queries", type=int, default=None, help="evaluate the first N judged queries only")
    ev.add_argument("--report", default=None, help="also write the JSON report to this file")
    ev.add_argument("--index", default=None, metavar="DIR",
                    help="score against the passage vectors an `e5studio embed-corpus DATA/passages.jsonl` wrote to "
                         "DIR (same model, precision and prefix, else refused); only the queries are embedded")
    ev.add_argument("--no-progress", action="store_true", help="no progress lines")
    ev.set_defaults(func=cmd_eval)
