"""Exact (brute-force) top-k search by inner product, in corpus chunks so memory stays bounded.

With unit vectors (the E5 recipe) the inner product is the cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def exact_search(queries: np.ndarray, corpus: np.ndarray, k: int, chunk_size: int = 65536
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` corpus rows for each query row by inner product.

    queries [q, d], corpus [n, d] (float32) -> (scores [q, k'] float32, indices [q, k'] int64) with
    k' = min(k, n), each row sorted by score descending (equal scores: lower index first).
    """
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"shapes do not match: queries {queries.shape}, corpus {corpus.shape}")
    if k < 1:
        raise ValueError("k must be at least 1")
    n = corpus.shape[0]
    k = min(k, n)
    best_scores = np.full((queries.shape[0], 0), -np.inf, dtype=np.float32)  # [q, <=k]
    best_index = np.zeros((queries.shape[0], 0), dtype=np.int64)  # [q, <=k]
    for start in range(0, n, chunk_size):
        chunk = corpus[start:start + chunk_size]
        scores = queries @ chunk.T  # [q, c]
        index = np.broadcast_to(np.arange(start, start + chunk.shape[0], dtype=np.int64), scores.shape)
        all_scores = np.concatenate([best_scores, scores.astype(np.float32, copy=False)], axis=1)  # [q, <=k + c]
        all_index = np.concatenate([best_index, index], axis=1)
        if all_scores.shape[1] > k:
            keep = np.argpartition(-all_scores, k - 1, axis=1)[:, :k]  # [q, k] unordered
            all_scores = np.take_along_axis(all_scores, keep, axis=1)
            all_index = np.take_along_axis(all_index, keep, axis=1)
        best_scores, best_index = all_scores, all_index
    order = np.lexsort((best_index, -best_scores), axis=1)  # score descending, then index ascending
    return np.take_along_axis(best_scores, order, axis=1), np.take_along_axis(best_index, order, axis=1)


def to_run(query_ids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, indices: np.ndarray
           ) -> dict[str, dict[str, float]]:
    """The output of :func:`exact_search` as a run dictionary (query id -> {doc id: score})."""
    return {qid: {doc_ids[int(j)]: float(s) for s, j in zip(scores[row], indices[row], strict=True)}
            for row, qid in enumerate(query_ids)}
