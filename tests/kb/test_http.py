"""Knowledge-base search over HTTP against a real ``e5studio serve``: the same hits as the CLI's search, the
embedded store and pgvector agree, bad input is a clear 4xx, and a re-embedding switches versions atomically
under concurrent searches (no answer mixes versions)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from e5studio.control.store import Store
from e5studio.jobs.kb import ops
from e5studio.jobs.kb.build import Source
from tests.kb.conftest import OPTIONS, long_documents, write_jsonl
from tests.serving.server import ServerProcess


def _search(proc: ServerProcess, kb: str, key: str, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=proc.base_url, timeout=60, trust_env=False) as client:
        return client.post(f"/api/kb/default/{kb}/search", json=body, headers={"key": key})


def test_http_hits_equal_the_cli_and_pgvector_equals_exact(served: tuple[ServerProcess, Store, str]) -> None:
    proc, store, key = served
    docs = long_documents(40, seed=3)
    for i in (0, 7, 21):
        query = str(docs[i]["contents"])[:150]
        for by_document in (False, True):
            body = {"query": query, "k": 5, "by_document": by_document}
            emb, pg = _search(proc, "emb", key, body), _search(proc, "pg", key, body)
            assert emb.status_code == pg.status_code == 200, emb.text + pg.text
            ours = emb.json()["hits"]
            cli = [h.to_json() for h in ops.search(store, "default", "emb", query, 5, None, by_document,
                                                   OPTIONS.engine)]
            assert [(h["document_id"], h["chunk"]) for h in ours] == [(h["document_id"], h["chunk"]) for h in cli]
            for a, b in zip(ours, cli, strict=True):
                assert a["score"] == pytest.approx(b["score"], abs=1e-4)
                assert (a["text"], a["start"], a["end"], a["metadata"]) == (b["text"], b["start"], b["end"],
                                                                            b["metadata"])
            theirs = pg.json()["hits"]
            assert [(h["document_id"], h["chunk"]) for h in theirs] == [(h["document_id"], h["chunk"]) for h in ours]
            assert [h["score"] for h in theirs] == pytest.approx([h["score"] for h in ours], abs=1e-4)
        if not by_document:
            assert ours[0]["document_id"] == f"doc-{i}"
    filtered = _search(proc, "pg", key, {"query": "protein", "k": 20, "filter": {"lang": "de", "year": 2001}})
    exact = _search(proc, "emb", key, {"query": "protein", "k": 20, "filter": {"lang": "de", "year": 2001}})
    assert filtered.json()["hits"] and all(h["metadata"] == {"lang": "de", "year": 2001}
                                           for h in filtered.json()["hits"])
    assert [h["document_id"] for h in filtered.json()["hits"]] == [h["document_id"] for h in exact.json()["hits"]]


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"query": "x", "k": 0}, 400, "'k' must be an integer from 1 to 1000"),
    ({"query": "x", "k": 10**9}, 400, "'k' must be an integer"),
    ({"query": "x", "filter": {"nope": 1}}, 400, "unknown metadata field 'nope'"),
    ({"query": "x", "filter": {"lang": {"$ne": 1}}}, 400, "'filter.lang' must be a string"),
    ({"query": "x", "filter": {"lang": "a\u0000"}}, 400, "NUL"),
    ({"query": ""}, 400, "'query' must be a non-empty string"),
    ({"query": "x" * 9000}, 400, "at most 8,192"),
    ({"query": "x", "by_document": "yes"}, 400, "'by_document' must be true or false"),
])
def test_bad_search_bodies_are_clear_errors(served: tuple[ServerProcess, Store, str], body: dict[str, Any],
                                            status: int, words: str) -> None:
    proc, _, key = served
    for kb in ("emb", "pg"):
        answer = _search(proc, kb, key, body)
        assert answer.status_code == status, answer.text
        assert words in answer.json()["error"]["message"]


def test_keys_and_unknown_names(served: tuple[ServerProcess, Store, str]) -> None:
    proc, _, key = served
    assert _search(proc, "emb", "e5k-not-a-key", {"query": "x"}).status_code == 401
    assert _search(proc, "nothere", "e5k-not-a-key", {"query": "x"}).status_code == 401  # nothing learnt
    assert _search(proc, "nothere", key, {"query": "x"}).status_code == 404
    with httpx.Client(base_url=proc.base_url, timeout=60, trust_env=False) as client:
        hostile = client.post("/api/kb/default/emb/search", content=b'{"query": "\\ud800"}',
                              headers={"key": key, "content-type": "application/json"})
    assert hostile.status_code == 400, hostile.text


def test_reembed_switches_atomically_under_concurrent_searches(served: tuple[ServerProcess, Store, str],
                                                               tiny_dir: Path) -> None:
    proc, store, key = served
    store.create_endpoint("default", "ep-int8", str(tiny_dir), 32, precision="int8")
    proc.wait_status("default", "ep-int8")
    query = {"query": "protein kinase receptor", "k": 8}
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            answer = _search(proc, "emb", key, query)
            assert answer.status_code == 200, answer.text
            seen.append(answer.json())

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        ops.reembed(store, "default", "emb", "ep-int8", OPTIONS, proc.data_dir)
        after = len(seen)
        while len(seen) < after + 3:
            pass
    finally:
        stop.set()
        for t in threads:
            t.join()
    versions = {answer["version"] for answer in seen}
    assert versions == {1, 2}, versions
    # every answer is exactly what its version answers alone: never a mix of the two
    by_version = {v: [a["hits"] for a in seen if a["version"] == v] for v in versions}
    for v, answers in by_version.items():
        first = [(h["document_id"], h["chunk"]) for h in answers[0]]
        assert all([(h["document_id"], h["chunk"]) for h in hits] == first for hits in answers), v
    # the order of answers: once version 2 answered, version 1 never again (one atomic switch)
    order = [answer["version"] for answer in seen]
    assert order == sorted(order)
    kb = store.get_kb("default", "emb")
    assert kb.current_version == 2 and [v.status for v in store.kb_versions(kb.id)] == ["Ready", "Ready"]


def _refusal(proc: ServerProcess, kb: str, key: str) -> str:
    """The 409 of an HTTP search of ``kb`` (waiting while the endpoint's model loads: 503)."""
    import time

    deadline = time.monotonic() + 120
    while (answer := _search(proc, kb, key, {"query": "protein"})).status_code == 503:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)
    assert answer.status_code == 409, answer.text
    return str(answer.json()["error"]["message"])


def _cli_refusal(store: Store, kb: str) -> str:
    from e5studio.errors import ConflictError
    from e5studio.settings import EngineSettings

    with pytest.raises(ConflictError) as refused:
        ops.search(store, "default", kb, "protein", 5, None, False, EngineSettings(model="unused", device="cpu",
                                                                                   threads=1))
    return str(refused.value)


def _ui_page(proc: ServerProcess, kb: str, status: int, **params: str) -> str:
    """The knowledge base's web page (logged in with the admin token), unescaped."""
    import html

    from tests.web.test_auth import login

    with httpx.Client(base_url=proc.base_url, timeout=60, trust_env=False) as http:
        login(http, proc.admin_token)
        page = http.get(f"/ui/kb/default/{kb}", params=params)
    assert page.status_code == status, page.text[page.text.find("role=\"alert\""):][:600]
    return html.unescape(page.text)


def test_a_query_model_other_than_the_stamped_one_is_refused(served: tuple[ServerProcess, Store, str],
                                                             tmp_path: Path) -> None:
    """The endpoint now serves other weights of the same shape and path name (a fine-tune deployed in place of
    the model): an HTTP search is refused by the weights' checksum, naming both stamps and `kb reembed`, with
    the very message of the CLI's search (one check); so is a stamp of another max length. A re-embedding with
    the new model answers again."""
    import json

    from e5studio.control.schema import endpoints, kb_versions
    from e5studio.engine.synthetic import write_random_checkpoint

    proc, store, key = served
    base = write_random_checkpoint(tmp_path / "base", "tiny", seed=0)
    tuned = write_random_checkpoint(tmp_path / "tuned", "tiny", seed=11)  # same shape and tokenizer, other weights
    created = proc.admin("POST", "/api/admin/endpoints", {"project": "default", "name": "swapped", "model": str(base)})
    assert created.status_code == 201, created.text
    proc.wait_status("default", "swapped")
    docs = write_jsonl(tmp_path / "few.jsonl", long_documents(3, seed=1))
    ops.create(store, "default", "stale", "swapped", Source(docs, "auto", None, "id"),
               {"mode": "tokens", "chunk_tokens": 40, "overlap": 8}, OPTIONS, proc.data_dir)
    assert _search(proc, "stale", key, {"query": "protein"}).status_code == 200
    _, version = store.current_kb_version("default", "stale")
    old_sha = version.stamp["model_sha256"]

    with store._write() as conn:  # the model directory now holds the fine-tune (what a deploy in place does)
        conn.execute(endpoints.update().where(endpoints.c.name == "swapped").values(model=str(tuned)))
    message = _refusal(proc, "stale", key)
    assert "differs in model_sha256" in message and "kb reembed" in message, message
    assert f"sha256 {old_sha[:12]}" in message and message.count("sha256 ") == 2, message  # both stamps named
    assert message == _cli_refusal(store, "stale")  # the CLI's search: the same check, the same words
    assert message in _ui_page(proc, "stale", 409, q="protein")  # the web UI's search box too
    assert 'id="stale"' in _ui_page(proc, "stale", 200)  # and its page offers the re-embedding

    reembedded = ops.reembed(store, "default", "stale", None, OPTIONS, proc.data_dir)
    assert "searches now use version 2" in reembedded
    assert _search(proc, "stale", key, {"query": "protein"}).json()["version"] == 2

    _, version = store.current_kb_version("default", "stale")
    stamp = {**version.stamp, "max_length": 64}
    with store._write() as conn:  # what another build's stamp would say
        conn.execute(kb_versions.update().where(kb_versions.c.id == version.id).values(stamp=json.dumps(stamp)))
    message = _refusal(proc, "stale", key)
    assert "max length 64" in message and "differs in max_length" in message and "kb reembed" in message
    assert message == _cli_refusal(store, "stale")


def test_admin_api_lists_shows_and_activates_a_version(served: tuple[ServerProcess, Store, str]) -> None:
    proc, store, key = served
    listed = proc.admin("GET", "/api/admin/kb?project=default").json()["knowledge_bases"]
    assert {"emb", "pg"} <= {kb["name"] for kb in listed}
    shown = proc.admin("GET", "/api/admin/projects/default/kb/emb").json()
    assert shown["store"] == "embedded" and shown["search_url"].endswith("/search")
    assert all("path" not in v for v in shown["versions"])  # no server paths in the API
    ready = [v["version"] for v in shown["versions"] if v["status"] == "Ready"]
    if len(ready) > 1:  # after the re-embedding test: back to the first version, then forward again
        for version in (ready[0], ready[-1]):
            answer = proc.admin("POST", "/api/admin/projects/default/kb/emb/activate", {"version": version})
            assert answer.status_code == 200 and answer.json()["current_version"] == version, answer.text
            assert _search(proc, "emb", key, {"query": "protein"}).json()["version"] == version
    for bad in ({"version": 0}, {"version": "1"}, {}):
        refused = proc.admin("POST", "/api/admin/projects/default/kb/emb/activate", bad)
        assert refused.status_code == 400 and "'version'" in refused.text
    assert proc.admin("POST", "/api/admin/projects/default/kb/emb/activate", {"version": 99}).status_code == 409
    no_token = httpx.post(proc.base_url + "/api/admin/kb", timeout=30, trust_env=False)
    assert no_token.status_code in (401, 405)


def _job(proc: ServerProcess, answer: httpx.Response) -> dict[str, Any]:
    """Follow a submitted job (the admin API's job route) until it ends; the last view of it."""
    import time

    assert answer.status_code == 202, answer.text
    url = answer.json()["job"]["url"].removeprefix(proc.base_url)
    deadline = time.monotonic() + 240
    while (job := proc.admin("GET", url).json())["status"] in ("Queued", "Running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def test_admin_api_submits_create_and_reembed_jobs(served: tuple[ServerProcess, Store, str], tmp_path: Path) -> None:
    proc, store, key = served
    docs = write_jsonl(tmp_path / "api.jsonl", long_documents(9, seed=7))
    body = {"name": "viaapi", "endpoint": store.list_endpoints()[0].name, "data": str(docs), "id_field": "id",
            "chunk_tokens": 40, "overlap": 8}
    for bad, message in (({**body, "chunk_tokens": "40"}, "'chunk_tokens'"), ({**body, "data": str(docs) + "x"},
                                                                                "does not exist on the server"),
                         ({**body, "chunking": "pages"}, "'chunking'"), ({**body, "name": "bad name"}, "invalid")):
        refused = proc.admin("POST", "/api/admin/projects/default/kb", bad)
        assert refused.status_code == 400 and message in refused.json()["error"]["message"], refused.text
    assert proc.admin("POST", "/api/admin/projects/default/kb", {**body, "endpoint": "nope"}).status_code == 404
    submitted = proc.admin("POST", "/api/admin/projects/default/kb", body)
    assert submitted.json()["knowledge_base"]["name"] == "viaapi" and "data" not in submitted.json()["job"]["params"]
    job = _job(proc, submitted)
    assert job["status"] == "Succeeded" and job["kind"] == "kb" and job["step"] == job["total_steps"] == 9, job
    assert job["metrics"]["kb_version"] == 1 and job["phase_line"].startswith("kb viaapi")
    assert _search(proc, "viaapi", key, {"query": "protein"}).json()["version"] == 1
    job = _job(proc, proc.admin("POST", "/api/admin/projects/default/kb/viaapi/reembed", {}))
    assert job["status"] == "Succeeded" and job["metrics"]["kb_version"] == 2, job
    assert _search(proc, "viaapi", key, {"query": "protein"}).json()["version"] == 2
    assert proc.admin("GET", "/api/admin/jobs/nope").status_code == 404
