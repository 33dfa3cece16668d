"""``e5studio eval``: retrieval quality of a model on a test collection, as a JSON report.

The collection is read by the fine-tuning job's reader (:func:`e5studio.jobs.train.evaluate.load_eval_set`,
the layout of ``shared/data/<name>/``); passages and queries get the given prefixes (E5's by default; an
empty prefix leaves texts as they are, as MTEB runs non-E5 models), are embedded by the engine, searched
exactly, and scored by :mod:`e5studio.retrieval.metrics` (nDCG@10, MRR@10, Recall@100, MAP over the
top ``depth`` = 1000).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e5studio.engine.embedder import Embedder
from e5studio.jobs.train.evaluate import load_eval_set
from e5studio.retrieval.metrics import evaluate
from e5studio.retrieval.search import exact_search, to_run

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "map")


def with_prefix(text: str, prefix: str) -> str:
    """``text`` starting with ``prefix`` (added unless already there; an empty prefix changes nothing)."""
    return text if not prefix or text.startswith(prefix) else prefix + text


@dataclass(frozen=True)
class EvalSettings:
    data: Path
    split: str = "test"
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    metrics: tuple[str, ...] = DEFAULT_METRICS
    depth: int = 1000
    max_queries: int | None = None


def run_eval(embedder: Embedder, settings: EvalSettings, model: dict[str, Any] | None = None) -> dict[str, Any]:
    """Embed, search and score; returns the report (metrics, counts, settings, timings)."""
    evalset = load_eval_set(settings.data, settings.split, settings.max_queries)
    t0 = time.perf_counter()
    passages = embedder.tokenize([with_prefix(p, settings.passage_prefix) for p in evalset.passages])
    corpus = embedder.embed_ids(passages)  # [n, d]
    t1 = time.perf_counter()
    query_ids = embedder.tokenize([with_prefix(q, settings.query_prefix) for q in evalset.queries])
    queries = embedder.embed_ids(query_ids)  # [q, d]
    t2 = time.perf_counter()
    scores, indices = exact_search(queries, corpus, settings.depth)
    run = to_run(evalset.query_ids, evalset.doc_ids, scores, indices)
    metrics = evaluate(evalset.qrels, run, settings.metrics)
    t3 = time.perf_counter()
    return {
        "model": model or {"name": embedder.checkpoint.name, "path": str(embedder.checkpoint.path)},
        "data": str(settings.data), "split": settings.split,
        "passages": len(evalset.passages), "queries": len(evalset.query_ids),
        "query_prefix": settings.query_prefix, "passage_prefix": settings.passage_prefix,
        "max_length": embedder.max_length, "depth": settings.depth,
        "metrics": {k: round(v, 5) for k, v in metrics.items()},
        "seconds": {"passages": round(t1 - t0, 2), "queries": round(t2 - t1, 2), "search_and_score": round(t3 - t2, 2)},
    }
