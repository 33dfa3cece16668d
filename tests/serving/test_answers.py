"""Inference answers rendered with orjson from the numpy rows carry exactly the numbers ``json.dumps`` of the
rows as Python floats carries (what FastAPI's default path sent): a client parses the same float64 values."""

from __future__ import annotations

import json

import numpy as np

from e5studio.http_body import float64_rows, vectors_answer


def test_same_numbers_as_json_dumps_of_the_rows() -> None:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((32, 1024)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    rows[0, :6] = [0.0, -0.0, 1e-30, -3.4e38, 1.0, 1.17549435e-38]  # zeros, extremes, a subnormal edge
    answer = vectors_answer({"data": float64_rows(rows)})
    assert answer.status_code == 200 and answer.media_type == "application/json"
    sent = json.loads(answer.body)
    assert sent == json.loads(json.dumps({"data": rows.tolist()}))
    np.testing.assert_array_equal(np.asarray(sent["data"], dtype=np.float32), rows)  # exact round trip


def test_nested_shapes_of_every_route() -> None:
    rows = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    v2 = vectors_answer({"items": [{"id": i, "value": r} for i, r in zip(["a", 7], float64_rows(rows), strict=True)]})
    assert json.loads(v2.body) == {"items": [{"id": "a", "value": rows[0].tolist()},
                                             {"id": 7, "value": rows[1].tolist()}]}
    openai = vectors_answer({"object": "list", "data": [{"index": 0, "embedding": float64_rows(rows[0])}],
                             "usage": {"prompt_tokens": 3}})
    assert json.loads(openai.body)["data"][0]["embedding"] == rows[0].tolist()


def test_ids_beyond_64_bits_are_written_too() -> None:
    """v2 ids come back unchanged, whatever their size (orjson stops at 64 bits: Python's encoder takes over)."""
    rows = float64_rows(np.array([[0.25, -0.5]], dtype=np.float32))
    answer = vectors_answer({"items": [{"id": -(10 ** 29), "value": rows[0]}, {"id": 2 ** 64, "value": rows[0]}]})
    assert json.loads(answer.body) == {"items": [{"id": -(10 ** 29), "value": [0.25, -0.5]},
                                                 {"id": 2 ** 64, "value": [0.25, -0.5]}]}
