"""Issue 13's hand-made attacks as regression tests: every input gets a JSON 4xx naming the field or a result,
never a 500, and the keep-alive connection that carried the bad request keeps working (``still_serving``
sends a good request on the same client afterwards)."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from tests.serving.server import Banner, ServerProcess, assert_error, assert_vectors

Embed = Callable[..., np.ndarray]
pytestmark = pytest.mark.usefixtures("still_serving")


def _v2(banner: Banner) -> str:
    return f"/api/v2/predict/generic/{banner.project_id}/{banner.endpoint_id}"


def _post_raw(http: httpx.Client, path: str, raw: str, headers: dict[str, str]) -> httpx.Response:
    return http.post(path, content=raw.encode("utf-8"), headers={**headers, "Content-Type": "application/json"})


def test_deeply_nested_json_is_400_and_the_connection_lives(http: httpx.Client, nlp_path: str,
                                                            banner: Banner) -> None:
    raw = '{"inputs": ' + "[" * 3000 + "]" * 3000 + "}"  # ~6 kB; RecursionError in json before
    assert_error(_post_raw(http, nlp_path, raw, {"key": banner.key}), 400, "nested too deeply")
    raw = '{"inputs": ' + "[" * 100 + "]" * 100 + "}"  # under the recursion limit, over ours
    assert_error(_post_raw(http, nlp_path, raw, {"key": banner.key}), 400, "nested too deeply")


@pytest.mark.parametrize(("route", "raw", "field"), [
    ("nlp", '{"inputs": ["\\ud800 abc"]}', "inputs[0]"),
    ("nlp", '{"inputs": ["fine", "abc \\udfff"]}', "inputs[1]"),
    ("openai", '{"model": "\\ud800", "input": "x"}', "model"),
    ("v2", '{"items": [{"id": "\\udfff", "value": "x"}]}', "items[0].id"),
    ("v2", '{"items": [{"id": "a", "value": "x\\ud83d"}]}', "items[0].value"),
])
def test_lone_surrogates_are_400_naming_the_field(http: httpx.Client, nlp_path: str, banner: Banner, route: str,
                                                  raw: str, field: str) -> None:
    path = {"nlp": nlp_path, "openai": "/v1/embeddings", "v2": _v2(banner)}[route]
    headers = {"key": banner.key} if route != "openai" else {"Authorization": f"Bearer {banner.key}"}
    assert_error(_post_raw(http, path, raw, headers), 400, f"'{field}' has a lone surrogate")


@pytest.mark.parametrize(("item_id", "message"), [
    ("9" * 5000, "5000 digits"),
    ("NaN", "NaN"),
    ("Infinity", "Infinity"),
    ("-Infinity", "-Infinity"),
    ("1e999", "out of range"),
    ("1.5", "must be a string or an integer"),
    ("true", "must be a string or an integer"),
    ('{"a": 1}', "must be a string or an integer"),
])
def test_v2_ids_that_cannot_come_back_unchanged_are_refused(http: httpx.Client, banner: Banner, item_id: str,
                                                            message: str) -> None:
    raw = '{"items": [{"id": ' + item_id + ', "value": "query: x"}]}'
    assert_error(_post_raw(http, _v2(banner), raw, {"key": banner.key}), 400, message)


def test_v2_ids_keep_their_value_and_type(http: httpx.Client, banner: Banner, embed: Embed) -> None:
    items = [{"id": 7, "value": "query: a"}, {"id": "x7", "value": "query: b"}, {"value": "query: c"},
             {"id": -(10 ** 29), "value": "query: d"}]
    answer = http.post(_v2(banner), json={"items": items}, headers={"key": banner.key})
    assert answer.status_code == 200, answer.text
    got = answer.json()["items"]
    assert [i["id"] for i in got] == [7, "x7", "2", -(10 ** 29)]
    assert_vectors([i["value"] for i in got], embed([i["value"] for i in items]))


def test_an_8mb_single_text_is_answered_quickly(http: httpx.Client, nlp_path: str, banner: Banner,
                                                embed: Embed) -> None:
    """Tokenising stops near the model's maximum (whole-text tokenising took 22 s for 5 MB). The target on an
    idle machine is <= 1 s; the bound here leaves room for a shared CI machine."""
    text = "query: " + "protein intake of adult women " * 270_000  # ~8.1 MB, just under the body limit
    raw = json.dumps({"inputs": [text[: 8 * 1024 * 1024 - 64]]})
    started = time.perf_counter()
    answer = _post_raw(http, nlp_path, raw, {"key": banner.key})
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, answer.text[:300]
    assert elapsed < 5.0, f"an 8 MB text took {elapsed:.2f} s"
    assert_vectors(answer.json()["data"], embed([text[:20_000]]))  # the same first 256 tokens


def test_405_carries_allow(http: httpx.Client, nlp_path: str) -> None:
    answer = http.get(nlp_path)
    assert_error(answer, 405)
    assert answer.headers["allow"] == "POST"


def test_a_stray_key_header_does_not_hide_a_valid_admin_token(http: httpx.Client, server: ServerProcess) -> None:
    token = server.admin_token
    answer = http.get("/api/admin/projects", headers={"Authorization": f"Bearer {token}", "key": "e5s_stray"})
    assert answer.status_code == 200, answer.text
    models = http.get("/v1/models", headers={"Authorization": f"Bearer {token}", "key": "e5s_stray"})
    assert models.status_code == 200, models.text


def test_a_stray_bearer_does_not_hide_a_valid_endpoint_key(http: httpx.Client, nlp_path: str, banner: Banner) -> None:
    answer = http.post(nlp_path, json={"inputs": ["query: x"]},
                       headers={"key": banner.key, "Authorization": "Bearer e5s_wrong"})
    assert answer.status_code == 200, answer.text


def test_data_dir_and_store_are_owner_only(server: ServerProcess) -> None:
    assert stat.S_IMODE(os.stat(server.data_dir).st_mode) == 0o700
    for name in os.listdir(server.data_dir):
        if name.startswith("e5studio.db"):
            assert stat.S_IMODE(os.stat(server.data_dir / name).st_mode) == 0o600, name


def test_openapi_declares_bodies_errors_and_security(http: httpx.Client) -> None:
    schema: dict[str, Any] = http.get("/openapi.json").json()
    nlp = schema["paths"]["/api/predict/nlp/{project}/{endpoint}"]["post"]
    assert nlp["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/NlpRequest")
    assert {"400", "401", "403", "404", "413", "429", "503", "500"} <= set(nlp["responses"])
    assert nlp["security"] == [{"key": []}, {"bearer": []}]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (method, path)
            if method == "post" and not path.endswith("/rotate-key"):  # the one POST without a body
                assert "requestBody" in operation, (method, path)
    assert set(schema["components"]["securitySchemes"]) == {"key", "bearer"}
    assert schema["components"]["schemas"]["V2Item"]["properties"]["id"]
    for page in ("/docs", "/redoc"):  # they would load a third-party script on the UI's origin (issue 26, pt 9)
        assert http.get(page).status_code == 404, page
