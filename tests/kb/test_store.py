"""The knowledge-base records of the control store, on SQLite and PostgreSQL: names, versions, the atomic
switch of the current version, refusals."""

from __future__ import annotations

import pytest

from e5studio.control.store import Store
from e5studio.errors import ConflictError, InputError, NotFoundError


def test_knowledge_bases_and_versions(store_target: str) -> None:
    with Store(store_target) as store:
        store.create_project("p")
        endpoint, _ = store.create_endpoint("p", "ep", "some-model", 32)
        kb = store.create_kb("p", "docs", "ep", chunking={"mode": "tokens", "chunk_tokens": None, "overlap": 32})
        assert (kb.project_name, kb.endpoint_id, kb.current_version, kb.store_kind) == ("p", endpoint.id, 0,
                                                                                           "embedded")
        assert store.get_kb("p", "docs") == store.get_kb("p", kb.id) == kb
        with pytest.raises(ConflictError, match="already exists"):
            store.create_kb("p", "docs", "ep", chunking={})
        for bad, words in (("a b", "invalid knowledge base name"), ("x\x00", "invalid knowledge base name")):
            with pytest.raises(InputError, match=words):
                store.create_kb("p", bad, "ep", chunking={})
        with pytest.raises(InputError, match="must not hold a password"):
            store.create_kb("p", "pg", "ep", chunking={}, store_url="postgres://u:secret@h/db")
        with pytest.raises(NotFoundError):
            store.get_kb("p", "nope\x00")
        with pytest.raises(ConflictError, match="no complete version yet"):
            store.current_kb_version("p", "docs")

        v1 = store.add_kb_version(kb.id, endpoint.id, {"model_sha256": "a"}, lambda n: f"/x/v{n}", lambda n: f"t{n}")
        assert (v1.version, v1.status, v1.path, v1.table_name) == (1, "Building", "/x/v1", "t1")
        with pytest.raises(ConflictError, match="is being built"):
            store.add_kb_version(kb.id, endpoint.id, {}, str, str)
        with pytest.raises(ConflictError, match="not ready"):
            store.switch_kb_version(kb.id, 1)
        store.update_kb_version(v1.id, status="Ready", documents=3, chunks=7, fields=["b", "a", "a"], bump=True)
        store.switch_kb_version(kb.id, 1)
        found, current = store.current_kb_version("p", "docs")
        assert (current.documents, current.chunks, current.fields, current.generation) == (3, 7, ["a", "b"], 1)
        assert current.stamp == {"model_sha256": "a"}

        v2 = store.add_kb_version(kb.id, endpoint.id, {"model_sha256": "b"}, lambda n: f"/x/v{n}", str)
        assert store.current_kb_version("p", "docs")[1].version == 1  # searches stay on version 1 while 2 builds
        store.update_kb_version(v2.id, status="Ready")
        store.switch_kb_version(kb.id, 2)
        assert store.current_kb_version("p", "docs")[1].stamp == {"model_sha256": "b"}
        with pytest.raises(ConflictError, match="the one searches use"):
            store.delete_kb_version(kb.id, 2)
        store.delete_kb_version(kb.id, 1)
        assert [v.version for v in store.kb_versions(kb.id)] == [2]
        assert [k.name for k in store.list_kbs("p")] == ["docs"] == [k.name for k in store.list_kbs()]
        assert [v.version for v in store.delete_kb(kb.id)] == [2]
        assert store.list_kbs() == []
