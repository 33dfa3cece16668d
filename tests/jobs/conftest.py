"""Fixtures of the fine-tuning tests: a toy dataset and tiny checkpoints (with and without dropout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.jobs.toy import tiny_checkpoint, toy_dataset


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 training queries (5 negatives each, some with two positives) and a small test split."""
    return toy_dataset(tmp_path_factory.mktemp("toy") / "data")


@pytest.fixture(scope="session")
def tiny_dropout_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """The tiny random BERT with dropout 0.1 (so resume must restore the dropout RNG)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny-dropout") / "ckpt", dropout=0.1)


@pytest.fixture(scope="session")
def tiny_nodropout_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """The tiny random BERT without dropout (so several processes can match one exactly)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny-nodropout") / "ckpt", dropout=0.0)
