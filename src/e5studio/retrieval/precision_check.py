"""``e5studio precision-check --model M``: every precision this CPU offers, measured here, so a user picks one
from figures: tokens/s, single-query p50, min/mean cosine vs fp32 and nDCG@10 on a small bundled sample
(``precision_sample/``: 50 SciFact test queries over 300 abstracts, derived by
``scripts/make_precision_sample.py``).

Each precision embeds the same texts: the sample's passages (tokens/s over the whole set, best of
``rounds``), then each query alone (single-query p50 and p95); the cosines compare each vector with fp32's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from e5studio.engine.cpu import cpu_features
from e5studio.engine.flags import add_engine_flags, engine_settings
from e5studio.settings import EngineSettings
from e5studio.vocabulary import PASSAGE_PREFIX, QUERY_PREFIX

if TYPE_CHECKING:  # the CLI builds its parser without torch; check() imports the engine
    from e5studio.engine.embedder import Embedder

SAMPLE = Path(__file__).resolve().parent / "precision_sample"


def measure(embedder: Embedder, passages: list[str], queries: list[str], rounds: int) -> dict[str, Any]:
    """tokens/s over ``passages`` (best of ``rounds``), single-query latencies, and the vectors."""
    ids = embedder.tokenize(passages)
    tokens = sum(len(s) for s in ids)
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        vectors = embedder.embed_ids(ids)
        best = min(best, time.perf_counter() - t)
    query_ids = embedder.tokenize(queries)
    embedder.embed_ids(query_ids[:1])  # first call: lazy set-up is not a query's time
    latencies, rows = [], []
    for s in query_ids:
        t = time.perf_counter()
        rows.append(embedder.embed_ids([s])[0])
        latencies.append(time.perf_counter() - t)
    latencies.sort()
    return {"tokens_per_s": tokens / best, "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
            "passages": vectors, "queries": np.stack(rows)}


def check(settings: EngineSettings, rounds: int = 2, prefixes: bool = True) -> list[dict[str, Any]]:
    """One row per precision offered on this CPU (fp32 first: the reference)."""
    from e5studio.engine.embedder import Embedder
    from e5studio.retrieval.evaluate import load_eval_set, score, with_prefix

    evalset = load_eval_set(SAMPLE)
    qp, pp = (QUERY_PREFIX, PASSAGE_PREFIX) if prefixes else ("", "")
    passages = [with_prefix(p, pp) for p in evalset.passages]
    queries = [with_prefix(q, qp) for q in evalset.queries]
    rows: list[dict[str, Any]] = []
    reference: dict[str, Any] = {}
    for precision in cpu_features().precisions:
        print(f"precision-check: {precision}: loading and measuring ...", file=sys.stderr, flush=True)
        embedder = Embedder.load(replace(settings, precision=precision))
        got = measure(embedder, passages, queries, rounds)
        reference = reference or got
        cos = np.concatenate([(got[k] * reference[k]).sum(axis=1) for k in ("passages", "queries")])
        ndcg = score(embedder, evalset, ("ndcg@10",), 100, qp, pp, corpus=got["passages"]).metrics["ndcg@10"]
        rows.append({"precision": precision, "runtime": embedder.runtime, "tokens_per_s": got["tokens_per_s"],
                     "p50_ms": got["p50_ms"], "p95_ms": got["p95_ms"], "min_cos": float(cos.min()),
                     "mean_cos": float(cos.mean()), "ndcg@10": ndcg})
        print(f"precision-check: {precision}: done", file=sys.stderr, flush=True)
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    features = cpu_features()
    lines = [f"CPU: {features.describe()}; precisions offered here: {', '.join(features.precisions)}",
             f"sample: {SAMPLE.name} (50 SciFact queries, 300 abstracts); cosines vs fp32 over all 350 texts",
             "",
             f"{'precision':<10}{'tokens/s':>10}{'vs fp32':>9}{'1-query p50':>13}{'p95':>9}"
             f"{'min cos':>10}{'mean cos':>10}{'nDCG@10':>9}  runtime"]
    base = rows[0]["tokens_per_s"]
    for r in rows:
        lines.append(f"{r['precision']:<10}{r['tokens_per_s']:>10,.0f}{r['tokens_per_s'] / base:>8.2f}x"
                     f"{r['p50_ms']:>11.1f}ms{r['p95_ms']:>7.1f}ms{r['min_cos']:>10.5f}{r['mean_cos']:>10.5f}"
                     f"{r['ndcg@10']:>9.4f}  {r['runtime']}")
    if "bf16" not in features.precisions:
        lines.append("bf16: not offered (this CPU has no native bf16: AVX512-BF16 or AMX)")
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    """The ``precision-check`` command on the CLI's sub-parsers."""
    parser = sub.add_parser("precision-check", help="measure every precision this CPU offers on a bundled sample",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_flags(parser, "the model to measure (hub id, alias or local directory)", model_required=True)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the passages (best counts; default 2)")
    parser.add_argument("--no-prefixes", action="store_true",
                        help="embed the texts as they are (models not trained with E5's query:/passage: prefixes)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    print(report(check(engine_settings(args), max(1, args.rounds), not args.no_prefixes)), flush=True)
    return 0
