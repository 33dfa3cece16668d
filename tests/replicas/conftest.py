"""Fixtures of the replica tests: a real PostgreSQL (the batch-embedding tests' ``postgres_url``), tiny
checkpoints, and two ``e5studio serve --store postgres://...`` replicas on one database, shared by the tests
that leave them running.

The teardown stops the replicas with SIGTERM and asserts a clean exit, no traceback in their logs, no key or
token in clear in them, and no SQLite control store in the data directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e5studio.engine.embedder import Embedder
from e5studio.engine.synthetic import write_random_checkpoint
from e5studio.settings import EngineSettings
from tests.jobs.toy import tiny_checkpoint, toy_dataset
from tests.replicas.cluster import Group, start_group, stop_group


@pytest.fixture(scope="session")
def other_model(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A second tiny checkpoint (another seed): an endpoint on it makes every replica load a new model."""
    return write_random_checkpoint(tmp_path_factory.mktemp("other-model") / "tiny-b", "tiny", seed=7)


@pytest.fixture(scope="session")
def other_embedder(other_model: Path) -> Embedder:
    """The reference: ``other_model`` in this process, as the replicas load it (CPU, one thread)."""
    return Embedder.load(EngineSettings(model=str(other_model), device="cpu", threads=1))


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fine-tuning tests' toy dataset (24 queries, 5 negatives each, a test split)."""
    return toy_dataset(tmp_path_factory.mktemp("toy") / "data")


@pytest.fixture(scope="session")
def train_model(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """The tiny random BERT without dropout, so two runs of one job can match exactly."""
    return tiny_checkpoint(tmp_path_factory.mktemp("train-model") / "ckpt", dropout=0.0)


@pytest.fixture(scope="session")
def pair(postgres_url: str, tmp_path_factory: pytest.TempPathFactory,
         tiny_dir: Path) -> Iterator[Group]:
    """Replicas a and b serving the tiny random BERT (d=32, loads in a blink) on one fresh database; their data
    directory is shared, like a volume both mount."""
    group = start_group(postgres_url, tmp_path_factory.mktemp("pair"), "replicas_pair", tiny_dir)
    yield group
    stop_group(group)
