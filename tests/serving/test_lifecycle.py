"""Endpoint lifecycle through the real CLI against the real server, batch-size semantics, admin API auth."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.server import MINILM, Banner, ServerProcess, assert_error, assert_vectors, json_prefix

Embed = Callable[..., np.ndarray]
PROJECT = "p1"


def _ok(result: Any) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return str(result.stdout)


def _cli_error(result: Any, *parts: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for part in parts:
        assert part in result.stderr, (part, result.stderr)
    return str(result.stderr)


@pytest.fixture(scope="module")
def project(server: ServerProcess) -> dict[str, Any]:
    created = json_prefix(_ok(server.cli("projects", "create", PROJECT, "--description", "lifecycle tests")))
    assert created["name"] == PROJECT
    return created


@pytest.fixture(scope="module")
def batch_one(server: ServerProcess, project: dict[str, Any]) -> dict[str, Any]:
    """``e5studio endpoints create p1 one --model all-minilm-l6-v2 --batch-size 1``: its view, key and output."""
    out = _ok(server.cli("endpoints", "create", PROJECT, "one", "--model", MINILM, "--batch-size", "1"))
    created = json_prefix(out)
    key = created["key"]
    assert re.fullmatch(r"e5s_[A-Za-z0-9_-]{43}", key), key
    assert "The key is shown once" in out and key in created["curl"]
    assert created["endpoint"]["batch_size"] == 1
    assert created["endpoint"]["project_id"] == project["id"]
    view = server.wait_status(PROJECT, "one")
    assert view["status"] == "Live", view
    return {**view, "key": key}


def _nlp(endpoint: dict[str, Any]) -> str:
    return f"/api/predict/nlp/{endpoint['project_id']}/{endpoint['id']}"


# -- the CLI -----------------------------------------------------------------------------------------


def test_projects_list_shows_both_projects(server: ServerProcess, project: dict[str, Any]) -> None:
    lines = _ok(server.cli("projects", "list")).splitlines()
    assert any(line.split()[:2] == [project["id"], PROJECT] for line in lines), lines
    assert any(line.split()[1:2] == ["default"] for line in lines), lines


def test_duplicate_project_is_a_clear_cli_error(server: ServerProcess, project: dict[str, Any]) -> None:
    _cli_error(server.cli("projects", "create", PROJECT), "HTTP 409", f"project '{PROJECT}' already exists")


def test_endpoints_list_and_show(server: ServerProcess, batch_one: dict[str, Any]) -> None:
    lines = _ok(server.cli("endpoints", "list", "--project", PROJECT)).splitlines()
    line = next(line for line in lines if line.startswith(f"{PROJECT}/one "))
    assert "Live" in line and f"model={MINILM}" in line and "batch_size=1" in line
    assert f"{server.base_url}{_nlp(batch_one)}" in line
    everything = _ok(server.cli("endpoints", "list"))
    assert f"default/{MINILM} " in everything and f"{PROJECT}/one " in everything
    for ref in (("one",), (batch_one["project_id"], batch_one["id"])):
        shown = json_prefix(_ok(server.cli("endpoints", "show", PROJECT if len(ref) == 1 else ref[0], ref[-1])))
        assert shown["id"] == batch_one["id"] and shown["status"] == "Live" and shown["batch_size"] == 1
        assert shown["model"] == MINILM
        assert shown["urls"]["nlp"] == f"{server.base_url}{_nlp(batch_one)}"
        assert "key_hash" not in shown and batch_one["key"] not in str(shown)


def test_the_new_endpoint_serves_with_its_key(http: httpx.Client, batch_one: dict[str, Any], embed: Embed) -> None:
    text = "query: one at a time"
    answer = http.post(_nlp(batch_one), json={"inputs": [text]}, headers={"key": batch_one["key"]})
    assert answer.status_code == 200, answer.text
    assert_vectors(answer.json()["data"], embed([text]))


def test_rotate_key_then_delete(server: ServerProcess, http: httpx.Client, project: dict[str, Any],
                                embed: Embed) -> None:
    created = json_prefix(_ok(server.cli("endpoints", "create", PROJECT, "temp", "--model", MINILM)))
    old_key, path = created["key"], _nlp(created["endpoint"])
    assert server.wait_status(PROJECT, "temp")["status"] == "Live"
    body = {"inputs": ["query: rotate me"]}
    assert http.post(path, json=body, headers={"key": old_key}).status_code == 200

    rotated = json_prefix(_ok(server.cli("endpoints", "rotate-key", PROJECT, "temp")))
    new_key = rotated["key"]
    assert new_key != old_key and new_key in rotated["curl"]
    assert_error(http.post(path, json=body, headers={"key": old_key}), 401, "the key is not valid")
    answer = http.post(path, json=body, headers={"key": new_key})
    assert answer.status_code == 200, answer.text
    assert_vectors(answer.json()["data"], embed(body["inputs"]))

    deleted = json_prefix(_ok(server.cli("endpoints", "delete", PROJECT, "temp")))
    assert deleted == {"deleted": created["endpoint"]["id"]}
    # its key opens nothing now (401, the answer for any key of no endpoint); a client with a key of its own
    # learns that the endpoint is gone
    assert_error(http.post(path, json=body, headers={"key": new_key}), 401, "the key is not valid")
    assert_error(http.post(path, json=body, headers={"key": server.banner().key}), 404, "not found")
    _cli_error(server.cli("endpoints", "show", PROJECT, "temp"), "HTTP 404", "'temp' not found")
    assert "temp" not in _ok(server.cli("endpoints", "list", "--project", PROJECT))


def test_batch_size_two_is_refused_at_creation(server: ServerProcess, project: dict[str, Any]) -> None:
    cli = server.cli("endpoints", "create", PROJECT, "two", "--model", MINILM, "--batch-size", "2")
    assert cli.returncode == 2 and "invalid choice: 2" in cli.stderr, cli.stderr
    answer = server.admin("POST", "/api/admin/endpoints",
                          {"project": PROJECT, "name": "two", "model": MINILM, "batch_size": 2})
    assert_error(answer, 400, "batch size must be 1 or 32, got 2")
    assert "two" not in _ok(server.cli("endpoints", "list", "--project", PROJECT))


def test_cli_without_or_with_a_wrong_admin_token(server: ServerProcess) -> None:
    _cli_error(server.cli("projects", "list", token=None), "no admin token", "E5STUDIO_ADMIN_TOKEN")
    _cli_error(server.cli("projects", "list", token="e5sadm_" + "x" * 43), "HTTP 403", "admin token is not valid")


@pytest.mark.parametrize("path", ["/api/admin/projects", "/api/admin/endpoints"])
def test_admin_api_needs_the_admin_token(http: httpx.Client, banner: Banner, path: str) -> None:
    assert_error(http.get(path), 401, "missing admin token")
    assert_error(http.get(path, headers={"Authorization": "Bearer e5sadm_wrong"}), 403, "not valid")
    assert_error(http.get(path, headers={"Authorization": f"Bearer {banner.key}"}), 403, "not valid")
    assert_error(http.post(path, json={"name": "x"}), 401)
    assert http.get(path, headers={"Authorization": f"Bearer {banner.admin_token}"}).status_code == 200


# -- batch size --------------------------------------------------------------------------------------


def _batch_items_sum(http: httpx.Client) -> float:
    families = text_string_to_metric_families(http.get("/metrics").text)
    return sum(s.value for f in families if f.name == "e5studio_batch_items" for s in f.samples
               if s.name == "e5studio_batch_items_sum")


def _texts(n: int) -> list[str]:
    return [f"query: text number {i}" for i in range(n)]


def _request(http: httpx.Client, shape: str, endpoint: dict[str, Any], key: str, texts: list[str]) -> httpx.Response:
    tail = f"{endpoint['project_id']}/{endpoint['id']}"
    headers = {"key": key}
    if shape == "nlp":
        return http.post(f"/api/predict/nlp/{tail}", json={"inputs": texts}, headers=headers)
    if shape == "generic":
        return http.post(f"/api/predict/generic/{tail}", json={"instances": texts}, headers=headers)
    if shape == "generic_v2":
        return http.post(f"/api/v2/predict/generic/{tail}", json={"items": [{"value": t} for t in texts]},
                         headers=headers)
    return http.post("/v1/embeddings", json={"model": endpoint["id"], "input": texts},
                     headers={"Authorization": f"Bearer {key}"})


def _rows(shape: str, answer: httpx.Response) -> list[Any]:
    body = answer.json()
    return {"nlp": lambda: body["data"], "generic": lambda: body["predictions"],
            "generic_v2": lambda: [i["value"] for i in body["items"]],
            "openai": lambda: [d["embedding"] for d in body["data"]]}[shape]()


SHAPES = ["nlp", "generic", "generic_v2", "openai"]


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_one_endpoint_takes_one_and_refuses_two(http: httpx.Client, batch_one: dict[str, Any],
                                                      embed: Embed, shape: str) -> None:
    answer = _request(http, shape, batch_one, batch_one["key"], _texts(1))
    assert answer.status_code == 200, answer.text
    assert_vectors(_rows(shape, answer), embed(_texts(1)))
    computed = _batch_items_sum(http)
    refused = _request(http, shape, batch_one, batch_one["key"], _texts(2))
    assert_error(refused, 400, "Expected a Tensor with batch size <= 1, got batch size: 2")
    assert _batch_items_sum(http) == computed, "nothing is computed for a refused request"


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_32_endpoint_takes_32_and_refuses_33(http: httpx.Client, banner: Banner, embed: Embed,
                                                   shape: str) -> None:
    default = {"project_id": banner.project_id, "id": banner.endpoint_id}
    answer = _request(http, shape, default, banner.key, _texts(32))
    assert answer.status_code == 200, answer.text
    assert_vectors(_rows(shape, answer), embed(_texts(32)))
    computed = _batch_items_sum(http)
    refused = _request(http, shape, default, banner.key, _texts(33))
    assert_error(refused, 400, "Expected a Tensor with batch size <= 32, got batch size: 33")
    assert _batch_items_sum(http) == computed, "nothing is computed for a refused request"
