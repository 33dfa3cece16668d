"""Random checkpoints in real shapes: the E5-Large-V2 shape loads and agrees with sentence-transformers."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from e5studio.engine.checkpoint import load_checkpoint
from e5studio.engine.embedder import Embedder
from e5studio.engine.synthetic import SHAPES, write_random_checkpoint
from e5studio.errors import ModelError
from e5studio.settings import EngineSettings
from tests.reference import row_cosines, sentence_transformers_embeddings

E5_TEXTS = ["query: how much protein should a female eat", "passage: As a general guideline, the CDC's "
            "average requirement of protein for women ages 19 to 70 is 46 grams per day.", "a", ""]


@pytest.fixture(scope="module")
def e5_large_vectors(e5_large_dir: Path) -> np.ndarray:
    """Our vectors for E5_TEXTS on the E5-Large-V2-shaped checkpoint; the 1.3 GB model is freed right after."""
    embedder = Embedder.load(EngineSettings(model=str(e5_large_dir), device="cpu"))
    assert embedder.checkpoint.config == SHAPES["e5-large-v2"]
    assert embedder.max_length == 512
    vectors = embedder.embed(E5_TEXTS)
    del embedder
    gc.collect()
    return vectors


def test_e5_large_shape_gives_unit_1024_vectors(e5_large_vectors: np.ndarray) -> None:
    assert e5_large_vectors.shape == (len(E5_TEXTS), 1024)
    assert e5_large_vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e5_large_vectors, axis=1), 1.0, rtol=0, atol=1e-5)


def test_e5_large_shape_matches_sentence_transformers(e5_large_dir: Path, e5_large_vectors: np.ndarray) -> None:
    reference = sentence_transformers_embeddings(e5_large_dir, E5_TEXTS)
    gc.collect()
    cosines = row_cosines(e5_large_vectors, reference)
    assert cosines.min() >= 0.99999, cosines


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path, tiny_dir: Path) -> None:
    again = load_file(str(write_random_checkpoint(tmp_path / "same", "tiny", seed=0) / "model.safetensors"))
    other = load_file(str(write_random_checkpoint(tmp_path / "other", "tiny", seed=1) / "model.safetensors"))
    original = load_file(str(tiny_dir / "model.safetensors"))
    assert again.keys() == original.keys() == other.keys()
    assert all((again[k] == original[k]).all() for k in original)
    assert not (other["encoder.layer.0.attention.self.query.weight"]
                == original["encoder.layer.0.attention.self.query.weight"]).all()


def test_written_checkpoint_carries_config_tokenizer_and_max_length(tiny_dir: Path) -> None:
    checkpoint = load_checkpoint(str(tiny_dir))
    assert checkpoint.config == SHAPES["tiny"]
    assert checkpoint.max_length == 512
    for name in ("tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json"):
        assert (tiny_dir / name).is_file(), name


def test_unknown_shape_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown shape 'e5-huge'"):
        write_random_checkpoint(tmp_path, "e5-huge")
