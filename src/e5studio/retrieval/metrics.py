"""IR metrics over plain dictionaries, with trec_eval's conventions.

``qrels``: query id -> {doc id: grade}; a grade > 0 means relevant (graded for nDCG, binary otherwise).
``run``: query id -> {doc id: score}; higher scores rank first, ties broken by doc id (descending, as
trec_eval does), so results never depend on dictionary order.

Every metric is averaged over the queries of ``qrels`` that have at least one relevant document; a
query missing from ``run`` scores 0 (it retrieved nothing). Definitions:

- nDCG@k: sum over the top k of ``grade / log2(rank + 1)``, divided by the same sum over the ideal
  ordering of the judged documents (linear gains, as trec_eval's ``ndcg_cut`` and BEIR).
- MRR@k: 1 / rank of the first relevant document within the top k, else 0.
- Recall@k: relevant documents in the top k / all relevant documents of the query.
- MAP: mean over relevant documents of the precision at each one's rank (unretrieved ones add 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def ranking(scores: Mapping[str, float]) -> list[str]:
    """Doc ids by score, highest first; equal scores ordered by doc id, descending (trec_eval)."""
    return sorted(scores, key=lambda doc: (scores[doc], doc), reverse=True)


def _relevant(judged: Mapping[str, int]) -> dict[str, int]:
    return {doc: grade for doc, grade in judged.items() if grade > 0}


def ndcg(judged: Mapping[str, int], ranked: list[str], k: int) -> float:
    """nDCG@k of one ranked list against one query's judgements (0.0 when nothing is relevant)."""
    relevant = _relevant(judged)
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(grade / math.log2(rank + 2) for rank, grade in enumerate(ideal))
    if idcg == 0.0:
        return 0.0
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    return dcg / idcg


def reciprocal_rank(judged: Mapping[str, int], ranked: list[str], k: int) -> float:
    relevant = _relevant(judged)
    for rank, doc in enumerate(ranked[:k]):
        if doc in relevant:
            return 1.0 / (rank + 1)
    return 0.0


def recall(judged: Mapping[str, int], ranked: list[str], k: int) -> float:
    relevant = _relevant(judged)
    if not relevant:
        return 0.0
    return sum(doc in relevant for doc in ranked[:k]) / len(relevant)


def average_precision(judged: Mapping[str, int], ranked: list[str]) -> float:
    relevant = _relevant(judged)
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for rank, doc in enumerate(ranked):
        if doc in relevant:
            hits += 1
            total += hits / (rank + 1)
    return total / len(relevant)


def _parse(name: str) -> tuple[str, int | None]:
    base, _, cut = name.lower().partition("@")
    if base not in ("ndcg", "mrr", "recall", "map") or (base != "map" and not cut.isdigit()) or \
            (base == "map" and cut and not cut.isdigit()):
        raise ValueError(f"unknown metric {name!r}: use ndcg@K, mrr@K, recall@K or map")
    k = int(cut) if cut else None
    if k is not None and k < 1:
        raise ValueError(f"metric {name!r}: the cut-off must be at least 1")
    return base, k


def per_query(qrels: Qrels, run: Run, metric: str) -> dict[str, float]:
    """``metric`` ('ndcg@10', 'mrr@10', 'recall@100', 'map' or 'map@K') for each judged query."""
    base, k = _parse(metric)
    out: dict[str, float] = {}
    for qid, judged in qrels.items():
        if not _relevant(judged):
            continue
        ranked = ranking(run.get(qid, {}))
        if base == "ndcg":
            out[qid] = ndcg(judged, ranked, k or 0)
        elif base == "mrr":
            out[qid] = reciprocal_rank(judged, ranked, k or 0)
        elif base == "recall":
            out[qid] = recall(judged, ranked, k or 0)
        else:
            out[qid] = average_precision(judged, ranked if k is None else ranked[:k])
    return out


def evaluate(qrels: Qrels, run: Run, metrics: Iterable[str] = ("ndcg@10", "mrr@10", "recall@100", "map")
             ) -> dict[str, float]:
    """Mean of each metric over the judged queries (those with a relevant document)."""
    result: dict[str, float] = {}
    for metric in metrics:
        scores = per_query(qrels, run, metric)
        result[metric.lower()] = sum(scores.values()) / len(scores) if scores else 0.0
    return result
