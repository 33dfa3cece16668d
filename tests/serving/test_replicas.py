"""Two servers (replicas) in this process, each with its own store connection pool, model pool and job runner,
on one PostgreSQL store: an endpoint created through A answers on B, a key rotated through B is refused on A
(within FRESH_S: A answers from its copy of the keys),
a web session made on A works on B and ends on A when B logs out, failed logins over both are throttled together,
and each replica's /ready and the admin API say on how many replicas an endpoint is ready.

(The same properties across two ``e5studio serve`` processes are tested with the deployment files.)"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from e5studio.app import create_app
from e5studio.control.store import Store
from e5studio.serving.inference import FRESH_S
from e5studio.settings import EngineSettings, ServeSettings
from e5studio.web.sessions import COOKIE_NAME
from tests.conftest import PostgresDatabases


@dataclass
class Replicas:
    a: TestClient
    b: TestClient
    token: str
    store: Store  # a third connection pool, for the test's own look

    def admin(self, client: TestClient, method: str, path: str, **kwargs: Any) -> Any:
        answer = client.request(method, path, headers={"Authorization": f"Bearer {self.token}"}, **kwargs)
        assert answer.status_code < 300, answer.text
        return answer.json()


def _until(check: Any, seconds: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path,
             pg_databases: PostgresDatabases) -> Iterator[Replicas]:
    url = pg_databases.migrated()
    data_dir = tmp_path_factory.mktemp("replicas")
    settings = ServeSettings(data_dir=data_dir, store=url, default_model=str(tiny_dir), job_lease_s=2.0,
                             engine=EngineSettings(model=str(tiny_dir), device="cpu"))
    stores = [Store(url) for _ in range(3)]
    token = stores[0].ensure_admin_token()
    assert token is not None
    app_a = create_app(settings, stores[0])
    app_b = create_app(replace(settings, port=8001), stores[1])
    with TestClient(app_a) as a, TestClient(app_b) as b:
        yield Replicas(a, b, token, stores[2])
    for store in stores:
        store.close()
    pg_databases.drop(url)


def _embed(client: TestClient, path: str, key: str) -> Any:
    return client.post(path, json={"inputs": ["query: replicas"]}, headers={"key": key})


def test_an_endpoint_created_on_a_answers_on_b_and_a_rotated_key_is_refused_everywhere(replicas: Replicas) -> None:
    r = replicas
    r.admin(r.a, "POST", "/api/admin/projects", json={"name": "shared"})
    created = r.admin(r.a, "POST", "/api/admin/endpoints", json={"project": "shared", "name": "kb"})
    key, path = created["key"], "/api/predict/nlp/shared/kb"
    _until(lambda: _embed(r.b, path, key).status_code == 200, 60)  # B loads the model of A's new endpoint
    _until(lambda: _embed(r.a, path, key).status_code == 200, 60)
    on_a, on_b = _embed(r.a, path, key).json()["data"], _embed(r.b, path, key).json()["data"]
    np.testing.assert_allclose(on_a, on_b, atol=1e-6)

    new_key = r.admin(r.b, "POST", "/api/admin/projects/shared/endpoints/kb/rotate-key")["key"]
    assert _embed(r.b, path, key).status_code == 401  # on the replica that rotated it: at its next request
    # on the other one within FRESH_S (A answers from its copy of the keys while that copy is younger)
    waited = _until(lambda: _embed(r.a, path, key).status_code == 401, 2 * FRESH_S)
    assert waited <= FRESH_S
    assert _embed(r.a, path, new_key).status_code == 200 and _embed(r.b, path, key).status_code == 401

    # both replicas report the model ready (heartbeats every 2 s): in the admin API, /ready and the web UI
    def counted() -> bool:
        shown = r.admin(r.b, "GET", "/api/admin/projects/shared/endpoints/kb")["replicas"]
        return bool(shown == {"ready": 2, "total": 2, "summary": "ready on 2 of 2 replicas"})

    _until(counted, 10)
    ready = r.b.get("/ready", headers={"Authorization": f"Bearer {r.token}"})
    assert ready.status_code == 200, ready.text
    assert ready.json()["replicas"]["kb"] == "ready on 2 of 2 replicas" and ready.json()["endpoints"]["kb"] == "Live"
    assert ready.json()["replica"] != r.a.get("/ready").json()["replica"]

    r.admin(r.a, "DELETE", "/api/admin/projects/shared/endpoints/kb")
    assert _embed(r.a, path, new_key).status_code == 401  # deleted on A: its key opens nothing there at once,
    waited = _until(lambda: _embed(r.b, path, new_key).status_code == 401, 2 * FRESH_S)  # nor on B after FRESH_S
    assert waited <= FRESH_S


def _login(client: TestClient, token: str, address: str = "testclient") -> Any:
    return client.post("/ui/login", data={"token": token, "next": "/ui/projects"}, follow_redirects=False)


def test_a_web_session_made_on_a_works_on_b_and_logout_on_b_ends_it_on_a(replicas: Replicas) -> None:
    r = replicas
    login = _login(r.a, r.token)
    assert login.status_code == 303, login.text
    session_id = login.cookies[COOKIE_NAME]
    r.a.cookies.clear()
    r.b.cookies.clear()
    cookie = {"Cookie": f"{COOKIE_NAME}={session_id}"}
    page = r.b.get("/ui/projects", headers=cookie, follow_redirects=False)
    assert page.status_code == 200, page.text  # B knows A's session
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    assert r.a.get("/ui/projects", headers=cookie, follow_redirects=False).status_code == 200
    out = r.b.post("/ui/logout", data={"csrf_token": csrf.group(1)}, headers=cookie, follow_redirects=False)
    assert out.status_code == 303, out.text
    after = r.a.get("/ui/projects", headers=cookie, follow_redirects=False)
    assert after.status_code in (302, 303, 307) and "/ui/login" in after.headers["location"]


def test_twenty_failed_logins_over_a_and_b_are_throttled_together(replicas: Replicas) -> None:
    r = replicas
    clients = [TestClient(app, client=("10.0.0.66", 5000)) for app in (r.a.app, r.b.app)]
    codes = []
    for i in range(20):  # alternately on A and B, admin API and web login
        client = clients[i % 2]
        if i % 4 < 2:
            answer = client.get("/api/admin/projects", headers={"Authorization": f"Bearer e5sadm_wrong{i}"})
        else:
            answer = client.post("/ui/login", data={"token": "wrong", "next": "/ui/"}, follow_redirects=False)
        codes.append(answer.status_code)
    assert codes[:10] == [403, 403, 401, 401] * 2 + [403, 403]  # 10 failures allowed in all, not 10 per replica
    assert codes[10:] == [429] * 10
    for client in clients:  # the right token too, from that address, on both
        assert client.get("/api/admin/projects", headers={"Authorization": f"Bearer {r.token}"}).status_code == 429
    other = TestClient(r.b.app, client=("10.0.0.7", 5000))
    assert other.get("/api/admin/projects", headers={"Authorization": f"Bearer {r.token}"}).status_code == 200


def test_replicas_starting_together_on_a_new_store_make_one_token_and_one_default_endpoint(
        pg_store_url: str) -> None:
    import threading

    from e5studio.app import first_start

    stores = [Store(pg_store_url) for _ in range(4)]
    printed: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def start(store: Store) -> None:
        barrier.wait()
        try:
            printed.append(first_start(store, ServeSettings(), "e5-large-v2"))
        except BaseException as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(len(lines) for lines in printed) == 2  # one replica printed the token, one the endpoint and key
    assert [e.name for e in stores[0].list_endpoints()] == ["e5-large-v2"]
    for store in stores:
        store.close()
