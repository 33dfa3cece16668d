"""Issue 25, point 3: while the control store is away, everything that needs it answers 503 with Retry-After (the
admin API, the CLI through it with a retryable exit status and a clear message, the web UI's pages as an error
page), nothing answers 500 or hangs; /health stays 200; /ready stays 200 on a replica whose models are loaded
(it says the store is unreachable); when the store answers again everything works without a restart.

A real ``e5studio serve`` process reaches a real PostgreSQL through a proxy that the test makes hang (a stopped
server or a partition) or reset (a killed server)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from e5studio.cli import EXIT_RETRYABLE
from tests.replicas.cluster import Group, create_database, login, session_client, stop_group, wait_until
from tests.resilience.proxy import PgProxy

# short bounds, not so short that a busy machine's slow start looks like an outage
TIMEOUT_FLAGS = ["--store-connect-timeout", "2", "--store-statement-timeout", "2", "--store-checkout-timeout", "1"]
ANSWER_WITHIN_S = 5.0 + 2.0  # the three bounds, and a busy machine's scheduling
RECOVER_WITHIN_S = 3.0


@pytest.fixture
def served(postgres_url: str, pg_proxy: PgProxy, tmp_path: Path, tiny_dir: Path) -> Iterator[Group]:
    url = pg_proxy.url(create_database(postgres_url, "resilience_outage"))
    group = Group(url, tmp_path, str(tiny_dir), count=1, extra_args=TIMEOUT_FLAGS)
    group.start()
    yield group
    pg_proxy.forward()
    stop_group(group)


def timed_get(client: httpx.Client, path: str, **kwargs: object) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    answer = client.get(path, **kwargs)  # type: ignore[arg-type]
    return answer, time.monotonic() - start


@pytest.mark.parametrize("fault", ["hang", "kill"])
def test_everything_answers_503_while_the_store_is_away_and_recovers_without_a_restart(
        served: Group, pg_proxy: PgProxy, fault: str) -> None:
    (replica,) = served.replicas
    admin = {"Authorization": f"Bearer {served.admin_token}"}
    cookie = login(replica, served.admin_token)
    nlp_path, key = urlsplit(served.default_url).path, served.default_key
    with replica.client() as client, session_client(replica, cookie) as ui:
        assert client.get("/api/admin/projects", headers=admin).status_code == 200
        assert ui.get("/ui/projects").status_code == 200
        assert client.post(nlp_path, json={"inputs": ["hello"]}, headers={"key": key}).status_code == 200

        getattr(pg_proxy, fault)()
        answer, took = timed_get(client, "/api/admin/projects", headers=admin)
        assert answer.status_code == 503, answer.text
        assert took < ANSWER_WITHIN_S, took
        assert int(answer.headers["Retry-After"]) >= 1
        error = answer.json()["error"]
        assert error["type"] == "unavailable_error" and "control store" in error["message"], error

        for _ in range(3):  # known to be away: at once
            answer, took = timed_get(client, "/api/admin/endpoints", headers=admin)
            assert (answer.status_code, took < 1.0) == (503, True), (answer.status_code, took)
        health, took = timed_get(client, "/health")
        assert (health.status_code, took < 1.0) == (200, True), (health.status_code, took)
        ready, _ = timed_get(client, "/ready")
        assert ready.status_code == 200, ready.text  # the models are loaded: it can serve what it knew
        assert ready.json()["store"].startswith("unreachable"), ready.json()

        page, took = timed_get(ui, "/ui/projects")
        assert page.status_code == 503 and took < ANSWER_WITHIN_S, (page.status_code, took)
        assert page.headers["content-type"].startswith("text/html") and "Retry-After" in page.headers
        assert "control store" in page.text and "Traceback" not in page.text, page.text[:2000]
        posted = ui.post("/ui/projects", data={"name": "x", "csrf_token": "whatever"})
        assert posted.status_code == 503, posted.status_code

        inference = client.post(nlp_path, json={"inputs": ["hello"]}, headers={"key": key})
        assert inference.status_code in (200, 503), inference.text  # fail static (serving) or 503: never a 500
        if inference.status_code == 503:
            assert "Retry-After" in inference.headers

        listed = replica.cli("projects", "list")
        assert listed.returncode == EXIT_RETRYABLE, (listed.returncode, listed.stdout, listed.stderr)
        assert "HTTP 503" in listed.stderr and "control store" in listed.stderr and "retryable" in listed.stderr
        assert "Traceback" not in listed.stderr

        pg_proxy.forward()
        _, recovered = wait_until(lambda: client.get("/api/admin/projects", headers=admin).status_code == 200,
                                  10.0, "the admin API after the store came back")
        assert recovered < RECOVER_WITHIN_S, recovered
        assert ui.get("/ui/projects").status_code == 200
        assert "store" not in client.get("/ready").json()
        assert client.post(nlp_path, json={"inputs": ["hello"]}, headers={"key": key}).status_code == 200
        assert replica.cli("projects", "list").returncode == 0
    assert replica.running  # no restart
