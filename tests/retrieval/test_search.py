"""Exact top-k search against a full sort, across corpus chunks."""

from __future__ import annotations

import numpy as np
import pytest

from e5studio.retrieval.search import exact_search, to_run


def _unit(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("chunk_size", [7, 64, 1000])
def test_top_k_equals_a_full_sort(chunk_size: int) -> None:
    queries, corpus = _unit(5, 16, 0), _unit(200, 16, 1)
    scores, indices = exact_search(queries, corpus, k=10, chunk_size=chunk_size)
    full = queries @ corpus.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=1e-6)
    assert scores.dtype == np.float32 and indices.dtype == np.int64


def test_k_larger_than_the_corpus_and_equal_scores() -> None:
    corpus = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    scores, indices = exact_search(np.array([[1, 0]], dtype=np.float32), corpus, k=10, chunk_size=2)
    assert indices.tolist() == [[0, 1, 2]]  # equal scores: lower index first
    assert scores.tolist() == [[1.0, 1.0, 0.0]]
    run = to_run(["q"], ["a", "b", "c"], scores, indices)
    assert run == {"q": {"a": 1.0, "b": 1.0, "c": 0.0}}


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="shapes"):
        exact_search(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32), 1)
    with pytest.raises(ValueError, match="k must be"):
        exact_search(np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32), 0)
