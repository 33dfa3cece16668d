"""Two replicas on one PostgreSQL store and one data directory answer the same knowledge-base hits, and a
re-embedding switches both at once (each reads the current version from the store at every search)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from e5studio.control.store import Store
from e5studio.jobs.kb import ops
from e5studio.jobs.kb.build import Source
from e5studio.settings import EngineSettings
from tests.kb.conftest import long_documents, write_jsonl
from tests.replicas.cluster import start_group, stop_group

OPTIONS = ops.BuildOptions(engine=EngineSettings(model="unused", device="cpu", threads=1), window_size=10,
                           progress=False, workers=1)


def _hits(url: str, kb: str, key: str, query: str) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
        answer = client.post(f"/api/kb/default/{kb}/search", json={"query": query, "k": 6, "by_document": True},
                             headers={"key": key})
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


@pytest.mark.slow
def test_two_replicas_answer_the_same_hits_and_switch_together(postgres_url: str, tmp_path: Path,
                                                               tiny_dir: Path) -> None:
    group = start_group(postgres_url, tmp_path, "kb_replicas", tiny_dir)
    try:
        a, b = group.replicas
        docs = write_jsonl(tmp_path / "docs.jsonl", long_documents(20, seed=11))
        with Store(group.url) as store:
            endpoint = store.list_endpoints()[0].name
            for name, url in (("emb", ""), ("pg", postgres_url)):
                ops.create(store, "default", name, endpoint, Source(docs, "auto", None, "id"),
                           {"mode": "tokens", "chunk_tokens": 40, "overlap": 8}, OPTIONS, group.data_dir, url)
            for kb in ("emb", "pg"):
                for query in ("protein kinase", "immune receptor dose"):
                    key = group.default_key
                    assert _hits(a.base_url, kb, key, query) == _hits(b.base_url, kb, key, query)
            ops.reembed(store, "default", "emb", None, OPTIONS, group.data_dir)
        for replica in (a, b):
            assert _hits(replica.base_url, "emb", group.default_key, "protein kinase")["version"] == 2
    finally:
        stop_group(group)
