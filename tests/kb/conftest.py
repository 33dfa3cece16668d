"""Fixtures of the knowledge-base tests: a control store with a project and an endpoint serving the tiny
random model, documents of mixed lengths (some far longer than the model's window)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from e5studio.control.store import Store
from e5studio.jobs.kb.build import Source
from e5studio.jobs.kb.ops import BuildOptions, create
from e5studio.settings import EngineSettings
from tests.batch_embed.conftest import WORDS
from tests.serving.server import ServerProcess

CHUNKING = {"mode": "tokens", "chunk_tokens": 40, "overlap": 8}
OPTIONS = BuildOptions(engine=EngineSettings(model="unused", device="cpu", threads=1), window_size=10,
                       progress=False, workers=1)


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


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path, postgres_url: str
           ) -> Iterator[tuple[ServerProcess, Store, str]]:
    """A real ``e5studio serve`` of the tiny model with knowledge bases ``emb`` (embedded) and ``pg``
    (pgvector) of the same 40 documents, shared by the package's HTTP tests."""
    root = tmp_path_factory.mktemp("kbserve")
    proc = ServerProcess(root / "data", root / "logs", model=str(tiny_dir))
    proc.start()
    key = proc.banner().key
    store = Store(proc.store_url or root / "data" / "e5studio.db")
    endpoint = store.list_endpoints()[0]
    docs = write_jsonl(root / "docs.jsonl", long_documents(40, seed=3))
    for name, url in (("emb", ""), ("pg", postgres_url)):
        create(store, "default", name, endpoint.name, Source(docs, "auto", None, "id"), CHUNKING, OPTIONS,
               proc.data_dir, url)
    try:
        yield proc, store, key
    finally:
        store.close()
        proc.stop()
