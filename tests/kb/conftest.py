"""Fixtures of the knowledge-base tests: a control store with a project and an endpoint serving the tiny
random model, documents of mixed lengths (some far longer than the model's window)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from e5studio.control.store import Store
from e5studio.jobs.kb.ops import BuildOptions
from e5studio.settings import EngineSettings
from tests.batch_embed.conftest import WORDS


def long_documents(n: int, seed: int = 0) -> list[dict[str, object]]:
    """``n`` documents of 5 to 900 words (many beyond a 128-token window), with metadata."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 900))]
        if i % 3 == 0:
            words.insert(rng.randint(0, len(words)), "Größe naïve 日本語 émigré 🎉")
        docs.append({"id": f"doc-{i}", "contents": " ".join(words) + f" ({i})", "lang": "en" if i % 2 else "de",
                     "year": 2000 + i % 5})
    return docs


def write_jsonl(path: Path, rows: Sequence[object]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


@pytest.fixture
def kb_store(tmp_path: Path, tiny_dir: Path) -> Iterator[Store]:
    """A SQLite store in ``tmp/data`` with project ``default`` and endpoints ``ep`` (the tiny model, max length
    taken from it) and ``ep2`` (the same model files copied elsewhere: another path, the same checksum)."""
    with Store(tmp_path / "data" / "e5studio.db") as store:
        store.create_project("default")
        store.create_endpoint("default", "ep", str(tiny_dir), 32)
        yield store


@pytest.fixture
def options() -> BuildOptions:
    return BuildOptions(engine=EngineSettings(model="unused", device="cpu", threads=1),
                        window_size=8, progress=False, workers=1)
