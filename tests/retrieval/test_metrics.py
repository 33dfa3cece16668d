"""IR metrics on cases computed by hand (graded nDCG, MRR, Recall, MAP, ties, missing queries)."""

from __future__ import annotations

import math

import pytest

from e5studio.retrieval.metrics import evaluate, ndcg, per_query, ranking

QRELS = {"q1": {"d1": 2, "d2": 1, "d3": 0}, "q2": {"d9": 1}, "q3": {"d1": 0}}
RUN = {"q1": {"d3": 0.9, "d1": 0.8, "d4": 0.7, "d2": 0.6}}  # q2 retrieved nothing; q3 has nothing relevant


def test_ndcg_graded_by_hand() -> None:
    # ranking d3 (0), d1 (2), d4 (-), d2 (1); ideal d1 (2), d2 (1)
    dcg3 = 2 / math.log2(3)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert per_query(QRELS, RUN, "ndcg@3")["q1"] == pytest.approx(dcg3 / idcg)
    assert per_query(QRELS, RUN, "ndcg@10")["q1"] == pytest.approx((dcg3 + 1 / math.log2(5)) / idcg)
    assert per_query(QRELS, RUN, "ndcg@10")["q1"] == pytest.approx(0.6433, abs=1e-4)
    assert ndcg({"a": 1}, ["a"], 10) == 1.0


def test_mrr_recall_map_by_hand() -> None:
    assert per_query(QRELS, RUN, "mrr@10")["q1"] == 0.5
    assert per_query(QRELS, RUN, "mrr@1")["q1"] == 0.0
    assert per_query(QRELS, RUN, "recall@2")["q1"] == 0.5
    assert per_query(QRELS, RUN, "recall@4")["q1"] == 1.0
    assert per_query(QRELS, RUN, "map")["q1"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert per_query(QRELS, RUN, "map@2")["q1"] == pytest.approx((1 / 2) / 2)


def test_means_cover_judged_queries_and_missing_runs_score_zero() -> None:
    result = evaluate(QRELS, RUN, ["ndcg@10", "MRR@10", "recall@100", "map"])
    assert set(result) == {"ndcg@10", "mrr@10", "recall@100", "map"}
    assert result["mrr@10"] == pytest.approx(0.25)  # (0.5 + 0) / 2: q3 has no relevant document
    assert result["recall@100"] == pytest.approx(0.5)
    assert set(per_query(QRELS, RUN, "map")) == {"q1", "q2"}


def test_ties_are_broken_by_doc_id_descending() -> None:
    assert ranking({"a": 1.0, "c": 0.5, "b": 1.0}) == ["b", "a", "c"]
    assert per_query({"q": {"a": 1}}, {"q": {"a": 1.0, "b": 1.0}}, "mrr@10")["q"] == 0.5


@pytest.mark.parametrize("name", ["ndcg", "p@10", "recall@0", "mrr@x", "map@-1"])
def test_unknown_metrics_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        evaluate(QRELS, RUN, [name])
