"""Two replicas, one control store: what one replica is told, the other knows.

Endpoints, keys, web sessions (with their CSRF tokens) and the failed-login count live in the PostgreSQL
store, so any replica behind a load balancer answers the same way, whichever one a request lands on.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from e5studio.engine.embedder import Embedder
from tests.replicas.cluster import Group, Replica, csrf_token, login, session_client, wait_until
from tests.serving.server import assert_vectors, json_prefix

TEXTS = ["query: how much protein should a female eat",
         "passage: As a general guideline, the CDC's average requirement of protein for women is 46 grams per day.",
         "query: which replica answered?"]
DEPLOY_TIMEOUT_S = 60.0  # a new endpoint's model loads on every replica (tiny model: well under a second)
PROPAGATION_S = 2.0  # a key rotated or a session ended on one replica holds on every other one within this
LOGIN_LIMIT = 10  # failed admin-token attempts per address and minute (README: "Ten failed ... get 429")
HEARTBEAT_WAIT_S = 10.0  # replicas write their heartbeat every 2 s
SAME = 1e-6  # two replicas, same model, same texts, one thread each: the same vectors


def predict(replica: Replica, path: str, key: str, texts: list[str] = TEXTS) -> httpx.Response:
    with replica.client() as client:
        return client.post(path, json={"inputs": texts}, headers={"key": key})


def live_on(replica: Replica, path: str, key: str) -> np.ndarray:
    """Wait until ``replica`` answers the endpoint (its model deployed there); the vectors of TEXTS."""
    answers: list[httpx.Response] = []

    def answered() -> bool:
        answers.append(predict(replica, path, key))
        return answers[-1].status_code == 200

    try:
        wait_until(answered, DEPLOY_TIMEOUT_S, f"the endpoint {path} on replica {replica.name}", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its last answer: {answers[-1].status_code} {answers[-1].text[:300]}") from None
    return np.asarray(answers[-1].json()["data"], dtype=np.float64)


def create_endpoint(replica: Replica, project: str, name: str, model: str) -> tuple[str, str]:
    """Project (if new) and endpoint through ``replica``'s admin API; (the NLP path, the key)."""
    if project not in {p["name"] for p in replica.admin("GET", "/api/admin/projects").json()["projects"]}:
        made = replica.admin("POST", "/api/admin/projects", {"name": project})
        assert made.status_code == 201, made.text
    answer = replica.admin("POST", "/api/admin/endpoints", {"project": project, "name": name, "model": model})
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return urlsplit(body["endpoint"]["urls"]["nlp"]).path, body["key"]


def test_an_endpoint_created_through_a_answers_on_b_with_identical_vectors(
        pair: Group, other_model: Any, other_embedder: Embedder) -> None:
    a, b = pair.replicas
    made = a.cli("projects", "create", "shared")
    assert made.returncode == 0, made.stderr
    made = a.cli("endpoints", "create", "shared", "made-on-a", "--model", str(other_model), "--batch-size", "32")
    assert made.returncode == 0, made.stderr
    body = json_prefix(made.stdout)
    key, path = body["key"], urlsplit(body["endpoint"]["urls"]["nlp"]).path
    on_b = live_on(b, path, key)  # b never saw the create call
    on_a = live_on(a, path, key)
    np.testing.assert_allclose(on_b, on_a, rtol=0, atol=SAME)
    assert_vectors(on_b, other_embedder.embed(TEXTS))  # and they are the model's vectors (within ATOL)
    # b knows it by name too (the OpenAI route looks endpoints up by name)
    with b.client() as client:
        answer = client.post("/v1/embeddings", json={"model": "made-on-a", "input": TEXTS[0]},
                             headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["data"][0]["embedding"], on_a[0], rtol=0, atol=SAME)
    listed = b.cli("endpoints", "list", "--project", "shared")
    assert listed.returncode == 0 and "shared/made-on-a  Live" in listed.stdout, listed.stdout + listed.stderr

    def shown() -> dict[str, Any]:  # each replica writes its heartbeat (with its models' states) every 2 s
        result = a.cli("endpoints", "show", "shared", "made-on-a")
        assert result.returncode == 0, result.stderr
        return dict(json_prefix(result.stdout)["replicas"])

    replicas, _ = wait_until(lambda: (r := shown())["ready"] == 2 and r, HEARTBEAT_WAIT_S,
                             "endpoints show: ready on both replicas", interval=0.5)
    assert (replicas["ready"], replicas["total"]) == (2, 2), replicas


def test_a_key_rotated_through_b_is_refused_on_a_within_2_s(pair: Group, other_model: Any) -> None:
    a, b = pair.replicas
    path, old_key = create_endpoint(a, "rotation", "rotated", str(other_model))
    live_on(a, path, old_key)
    live_on(b, path, old_key)
    assert predict(a, path, old_key).status_code == 200  # a has just used the old key (whatever it keeps of it)
    rotated = b.admin("POST", "/api/admin/projects/rotation/endpoints/rotated/rotate-key")
    rotated_at = time.monotonic()
    assert rotated.status_code == 200, rotated.text
    new_key = rotated.json()["key"]
    assert new_key != old_key
    wait_until(lambda: predict(a, path, old_key).status_code == 401, 10.0, "the old key refused on a")
    refused_after = time.monotonic() - rotated_at
    assert refused_after <= PROPAGATION_S, f"a accepted the rotated key for {refused_after:.2f} s"
    answer = predict(a, path, old_key)
    assert answer.status_code == 401 and answer.json()["error"]["code"] == 401, answer.text
    wait_until(lambda: predict(a, path, new_key).status_code == 200, PROPAGATION_S, "the new key accepted on a")
    assert predict(b, path, old_key).status_code == 401
    assert predict(b, path, new_key).status_code == 200


def test_a_web_session_made_on_a_works_on_b_and_logout_on_b_ends_it_on_a(pair: Group) -> None:
    a, b = pair.replicas
    cookie = login(a, pair.admin_token)
    with session_client(a, cookie) as on_a, session_client(b, cookie) as on_b:
        csrf = csrf_token(on_a)
        assert csrf_token(on_b) == csrf  # one session, one CSRF token, wherever it is read
        # a form posted on b with the token a's page carried (the browser's next request may land anywhere)
        made = on_b.post("/ui/projects", data={"name": "from-the-ui", "csrf_token": csrf})
        assert made.status_code == 303 and made.headers["location"] == "/ui/projects/from-the-ui", made.text[:500]
        assert on_a.get("/ui/projects/from-the-ui").status_code == 200
        forged = on_a.post("/ui/projects", data={"name": "forged", "csrf_token": "not-the-token"})
        assert forged.status_code == 403, forged.text[:300]

        assert on_b.post("/ui/logout", data={"csrf_token": csrf}).status_code == 303
        ended, _ = wait_until(lambda: (r := on_a.get("/ui/projects")).status_code == 303 and r, PROPAGATION_S,
                              "the session ended on a after the logout on b")
        assert ended.headers["location"].startswith("/ui/login"), ended.headers
        assert on_b.get("/ui/projects").status_code == 303
        answer = on_a.post("/ui/projects", data={"name": "after-logout", "csrf_token": csrf})
        assert answer.status_code == 401, answer.text[:300]
    assert "after-logout" not in {p["name"] for p in a.admin("GET", "/api/admin/projects").json()["projects"]}


def test_failed_logins_spread_over_a_and_b_are_throttled_together(pair: Group) -> None:
    """20 wrong admin tokens from one address, alternating replicas and the two doors (web login, admin
    API): the first LOGIN_LIMIT are refused as wrong, every later one gets 429, on both replicas."""
    a, b = pair.replicas

    def client(replica: Replica) -> httpx.Client:  # from 127.0.0.2: the other tests' address stays usable
        return replica.client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))

    answers: list[httpx.Response] = []
    with client(a) as on_a, client(b) as on_b:
        for attempt in range(20):
            target = (on_a, on_b)[attempt % 2]
            if attempt % 4 < 2:
                answers.append(target.post("/ui/login", data={"token": f"e5sadm_wrong-{attempt}", "next": "/ui/"}))
            else:
                answers.append(target.get("/api/admin/projects",
                                          headers={"Authorization": f"Bearer e5sadm_wrong-{attempt}"}))
    statuses = [r.status_code for r in answers]
    assert statuses[:LOGIN_LIMIT] == [401, 401, 403, 403] * 2 + [401, 401], statuses
    assert statuses[LOGIN_LIMIT:] == [429] * (20 - LOGIN_LIMIT), statuses
    for answer in answers[LOGIN_LIMIT:]:
        assert int(answer.headers["retry-after"]) >= 1, answer.headers
    # the right token from another address still works, on both
    for replica in (a, b):
        assert replica.admin("GET", "/api/admin/projects").status_code == 200
