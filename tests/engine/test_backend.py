"""Device / dtype choice and the torch backend's contract (ids in, unit float32 rows out, same order)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from e5studio.engine.backend import TorchBackend, pick_device, pick_dtype
from e5studio.engine.checkpoint import load_checkpoint
from e5studio.engine.embedder import Embedder
from e5studio.errors import ModelError
from e5studio.settings import EngineSettings
from tests.reference import row_cosines


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    with pytest.raises(ModelError, match="unknown device 'tpu9'"):
        pick_device("tpu9")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is missing")
def test_cuda_without_cuda_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="CUDA is not available"):
        pick_device("cuda")


def test_pick_dtype() -> None:
    cpu = torch.device("cpu")
    assert pick_dtype("auto", cpu) == torch.float32
    assert pick_dtype("bfloat16", cpu) == torch.bfloat16
    assert pick_dtype("float16", cpu) == torch.float16
    with pytest.raises(ModelError, match="unknown dtype 'float64'"):
        pick_dtype("float64", cpu)


def test_embed_batch_returns_unit_rows_in_input_order(tiny_dir: Path) -> None:
    backend = TorchBackend.load(load_checkpoint(str(tiny_dir)), device="cpu", dtype="float32")
    assert backend.dim == 32
    assert backend.device == "cpu"
    sequences = [np.array([101, 1037, 102]), np.array([101, 2023, 2003, 1037, 3231, 102]), np.array([101, 102])]

    together = backend.embed_batch(sequences)
    alone = np.concatenate([backend.embed_batch([s]) for s in sequences])

    assert together.dtype == np.float32
    assert together.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)


def test_bfloat16_on_cpu_stays_close_to_float32(minilm_embedder: Embedder, minilm_dir: Path) -> None:
    texts = ["query: how do cells divide?", "passage: Mitosis is the division of a nucleus.", "a", ""]
    bf16 = Embedder.load(EngineSettings(model=str(minilm_dir), device="cpu", dtype="bfloat16"))
    vectors = bf16.embed(texts)
    assert vectors.dtype == np.float32
    assert row_cosines(vectors, minilm_embedder.embed(texts)).min() >= 0.99


def test_threads_setting_sets_torch_threads(tiny_dir: Path) -> None:
    before = torch.get_num_threads()
    try:
        Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
