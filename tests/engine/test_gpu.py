"""CUDA: the same vectors as on CPU (fp32 exactly, half precision closely), batch invariance on the GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from e5studio.engine.embedder import Embedder
from e5studio.errors import ModelError
from e5studio.settings import EngineSettings
from tests.reference import row_cosines, words_text

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def texts(scifact_passages: list[str]) -> list[str]:
    return ["a", "", words_text(scifact_passages, 2000), *scifact_passages[:61]]


@pytest.fixture(scope="module")
def cpu_vectors(minilm_dir: Path, texts: list[str]) -> np.ndarray:
    return Embedder.load(EngineSettings(model=str(minilm_dir), device="cpu", max_length=512)).embed(texts)


def _cuda_embedder(minilm_dir: Path, dtype: str, max_batch_tokens: int = 8192) -> Embedder:
    return Embedder.load(EngineSettings(model=str(minilm_dir), device="cuda", dtype=dtype, max_length=512,
                                        max_batch_tokens=max_batch_tokens))


def test_auto_picks_cuda_and_half_precision(minilm_dir: Path) -> None:
    embedder = Embedder.load(EngineSettings(model=str(minilm_dir)))
    assert embedder.device.startswith("cuda")
    assert embedder.encoder.word_embeddings.weight.dtype in (torch.bfloat16, torch.float16)


def test_cuda_float32_equals_cpu(minilm_dir: Path, texts: list[str], cpu_vectors: np.ndarray) -> None:
    vectors = _cuda_embedder(minilm_dir, "float32").embed(texts)
    assert vectors.dtype == np.float32
    diff = np.abs(vectors - cpu_vectors).max(axis=1)
    assert diff.max() <= 1e-5, diff


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_half_precision_is_close_to_cpu(minilm_dir: Path, texts: list[str], cpu_vectors: np.ndarray,
                                             dtype: str) -> None:
    vectors = _cuda_embedder(minilm_dir, dtype).embed(texts)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=0, atol=1e-5)
    assert row_cosines(vectors, cpu_vectors).min() >= 0.999


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_text_alone_equals_text_in_split_batches(minilm_dir: Path, texts: list[str], dtype: str) -> None:
    embedder = _cuda_embedder(minilm_dir, dtype, max_batch_tokens=2048)
    batched = embedder.embed(texts)
    alone = np.stack([embedder.embed([t])[0] for t in texts])
    if dtype == "float32":
        assert np.abs(batched - alone).max() <= 1e-5
    else:
        assert row_cosines(batched, alone).min() >= 0.999


def test_absent_cuda_ordinal_is_a_model_error(minilm_dir: Path) -> None:
    absent = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ModelError, match=absent):
        Embedder.load(EngineSettings(model=str(minilm_dir), device=absent))
