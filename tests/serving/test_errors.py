"""Every wrong request gets a clear JSON error (``{"error": {"message": ...}}``) and the server keeps serving
(the ``still_serving`` fixture sends a good request after each test); odd but valid texts get correct vectors."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from e5studio.app import create_app
from e5studio.control.store import Store
from e5studio.serving.state import state_of
from e5studio.settings import EngineSettings, ServeSettings
from tests import stores
from tests.serving.server import MINILM, Banner, ServerProcess, assert_error, assert_vectors

Embed = Callable[..., np.ndarray]
pytestmark = pytest.mark.usefixtures("still_serving")
GOOD = {"inputs": ["query: hello"]}


@pytest.fixture(scope="module")
def other(server: ServerProcess) -> dict[str, Any]:
    """A second Live endpoint in another project, with its own key."""
    view, key = server.create_endpoint("errs", "other")
    assert server.wait_status("errs", "other")["status"] == "Live"
    return {**view, "key": key}


@pytest.fixture(scope="module")
def broken(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An endpoint whose model directory does not exist: Failed, with the reason."""
    missing = tmp_path_factory.mktemp("gone") / "no-such-checkpoint"
    created = server.cli("endpoints", "create", "errs", "broken", "--model", str(missing))
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout[: created.stdout.index("\nThe key is shown once")])["key"]
    view = server.wait_status("errs", "broken")
    return {**view, "key": key, "missing": str(missing)}


# -- auth and lookup ---------------------------------------------------------------------------------


def test_missing_key_is_401(http: httpx.Client, nlp_path: str) -> None:
    assert_error(http.post(nlp_path, json=GOOD), 401, "missing endpoint key", "'key: <endpoint key>'")
    assert_error(http.post("/v1/embeddings", json={"model": MINILM, "input": "x"}), 401, "missing")
    assert_error(http.get("/v1/models"), 401, "missing key")


@pytest.mark.parametrize("headers", [{"key": "e5s_" + "A" * 43}, {"key": "nonsense"},
                                     {"Authorization": "Bearer e5s_" + "A" * 43}])
def test_a_key_of_no_endpoint_is_401_and_names_nothing(http: httpx.Client, nlp_path: str, banner: Banner,
                                                      headers: dict[str, str]) -> None:
    """The same answer whether the endpoint exists or not (issue 26, point 5): no enumeration without a key."""
    known = http.post(nlp_path, json=GOOD, headers=headers)
    unknown = http.post(f"/api/predict/nlp/{banner.project_id}/nope", json=GOOD, headers=headers)
    no_project = http.post(f"/api/predict/nlp/nope/{banner.endpoint_id}", json=GOOD, headers=headers)
    openai = http.post("/v1/embeddings", json={"model": "nope", "input": "x"}, headers=headers)
    for answer in (known, unknown, no_project, openai):
        assert_error(answer, 401, "the key is not valid")
        assert answer.json() == known.json() and MINILM not in answer.text and "nope" not in answer.text


def test_bearer_key_works_on_the_sambastudio_route(http: httpx.Client, nlp_path: str, banner: Banner,
                                                   embed: Embed) -> None:
    answer = http.post(nlp_path, json=GOOD, headers={"Authorization": f"Bearer {banner.key}"})
    assert answer.status_code == 200, answer.text
    assert_vectors(answer.json()["data"], embed(GOOD["inputs"]))


def test_key_of_another_endpoint_is_403(http: httpx.Client, nlp_path: str, banner: Banner,
                                        other: dict[str, Any]) -> None:
    assert_error(http.post(nlp_path, json=GOOD, headers={"key": other["key"]}), 403, "not valid")
    other_path = f"/api/predict/nlp/{other['project_id']}/{other['id']}"
    assert_error(http.post(other_path, json=GOOD, headers={"key": banner.key}), 403, "not valid", "'other'")
    assert_error(http.post("/v1/embeddings", json={"model": "other", "input": "x"},
                           headers={"Authorization": f"Bearer {banner.key}"}), 403)
    listed = http.get("/v1/models", headers={"Authorization": f"Bearer {other['key']}"})
    assert [m["id"] for m in listed.json()["data"]] == ["other"]


def test_unknown_project_or_endpoint_is_404(http: httpx.Client, banner: Banner) -> None:
    headers = {"key": banner.key}
    assert_error(http.post(f"/api/predict/nlp/nope/{banner.endpoint_id}", json=GOOD, headers=headers), 404,
                 "project 'nope' not found")
    assert_error(http.post(f"/api/predict/generic/{banner.project_id}/nope", json={"instances": ["x"]},
                           headers=headers), 404, "endpoint 'nope' not found")
    assert_error(http.post("/v1/embeddings", json={"model": "nope", "input": "x"}, headers=headers), 404,
                 "endpoint 'nope' not found")


@pytest.mark.parametrize("route", ["/api/predict/nlp", "/api/predict/generic", "/api/v2/predict/generic"])
def test_without_a_valid_key_the_body_is_not_judged(http: httpx.Client, banner: Banner, route: str) -> None:
    """Lookup and key come first (the body of a caller without a valid key is never parsed)."""
    path = f"{route}/{banner.project_id}/{banner.endpoint_id}"
    bad = b'{"inputs": [1, 2'
    json_type = {"Content-Type": "application/json"}
    assert_error(http.post(path, content=bad, headers=json_type), 401, "missing endpoint key")
    assert_error(http.post(path, content=bad, headers={**json_type, "key": "nonsense"}), 401, "not valid")
    # the OpenAI shape names its endpoint in the body: without any key, the body is not even read
    assert_error(http.post("/v1/embeddings", content=bad, headers=json_type), 401, "missing endpoint key")
    # ... and with a key, its texts are judged after the key check
    assert_error(http.post("/v1/embeddings", json={"model": MINILM, "input": [None]},
                           headers={"Authorization": "Bearer nonsense"}), 401, "not valid")
    assert_error(http.post("/v1/embeddings", json={"model": MINILM, "input": [None]},
                           headers={"Authorization": f"Bearer {banner.key}"}), 400, "'input[0]' must be a string")


def test_unknown_route_is_404_json(http: httpx.Client) -> None:
    assert_error(http.get("/nope"), 404, "no such route", "GET /nope")
    assert_error(http.post("/api/predict/nlp/only-one-part", json=GOOD), 404, "no such route")
    assert_error(http.get("/api/predict/nlp/a/b"), 405)


# -- endpoint not Live -------------------------------------------------------------------------------


def test_failed_endpoint_shows_the_reason(server: ServerProcess, broken: dict[str, Any]) -> None:
    assert broken["status"] == "Failed", broken
    assert broken["missing"] in broken["status_reason"] and "does not exist" in broken["status_reason"]
    shown = server.cli("endpoints", "show", "errs", "broken")
    assert shown.returncode == 0 and '"status": "Failed"' in shown.stdout and "does not exist" in shown.stdout
    listed = server.cli("endpoints", "list", "--project", "errs")
    assert "errs/broken  Failed  (" in listed.stdout, listed.stdout


def test_failed_endpoint_answers_503_with_the_reason(http: httpx.Client, broken: dict[str, Any]) -> None:
    path = f"/api/predict/nlp/{broken['project_id']}/{broken['id']}"
    assert_error(http.post(path, json=GOOD, headers={"key": broken["key"]}), 503, "'broken'", "Failed",
                 "does not exist")
    assert_error(http.post("/v1/embeddings", json={"model": "broken", "input": "x"},
                           headers={"Authorization": f"Bearer {broken['key']}"}), 503, "does not exist")


def test_a_failed_endpoint_does_not_block_readiness(http: httpx.Client, broken: dict[str, Any],
                                                   banner: Banner) -> None:
    ready = http.get("/ready", headers={"Authorization": f"Bearer {banner.admin_token}"})
    assert ready.status_code == 200, ready.text
    assert ready.json()["endpoints"]["broken"] == "Failed" and ready.json()["counts"]["Failed"] >= 1


# -- bodies ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "parts"), [
    (b'{"inputs": ["query: a"', ("not valid JSON",)),
    (b"inputs=query", ("not valid JSON",)),
    (b"", ("empty",)),
    (b'["query: a"]', ("must be a JSON object", "list")),
    (b'{"inputs": ["caf\xe9"]}', ("not UTF-8",)),
])
def test_malformed_body_is_400(http: httpx.Client, nlp_path: str, banner: Banner, body: bytes,
                               parts: tuple[str, ...]) -> None:
    answer = http.post(nlp_path, content=body, headers={"key": banner.key, "Content-Type": "application/json"})
    assert_error(answer, 400, *parts)


@pytest.mark.parametrize(("inputs", "parts"), [
    ("query: a string", ("'inputs' must be a list of strings", "got string")),
    ([1, 2, 3], ("'inputs[0]' must be a string", "got number")),
    ({"text": "query: a"}, ("'inputs' must be a list of strings", "got object")),
    (["query: a", None], ("'inputs[1]' must be a string", "got null")),
    ([], ("'inputs' is an empty list",)),
])
def test_wrong_input_types_are_400(http: httpx.Client, nlp_path: str, banner: Banner, inputs: Any,
                                   parts: tuple[str, ...]) -> None:
    assert_error(http.post(nlp_path, json={"inputs": inputs}, headers={"key": banner.key}), 400, *parts)


def test_missing_field_and_bad_params_are_400(http: httpx.Client, banner: Banner) -> None:
    tail = f"{banner.project_id}/{banner.endpoint_id}"
    headers = {"key": banner.key}
    assert_error(http.post(f"/api/predict/nlp/{tail}", json={"instances": ["x"]}, headers=headers), 400, "'inputs'")
    assert_error(http.post(f"/api/predict/generic/{tail}", json={"inputs": ["x"]}, headers=headers), 400,
                 "'instances'")
    assert_error(http.post(f"/api/predict/nlp/{tail}", json={"inputs": ["x"], "params": "fast"}, headers=headers),
                 400, "'params' must be a JSON object")
    for items in ("x", [], [{"id": "a"}], [{"value": 3}], ["x"]):
        assert_error(http.post(f"/api/v2/predict/generic/{tail}", json={"items": items}, headers=headers), 400,
                     "items")


@pytest.mark.parametrize(("body", "parts"), [
    ({"input": "x"}, ("'model' is required",)),
    ({"model": MINILM}, ("'input' is required",)),
    ({"model": MINILM, "input": [[101, 2023, 102]]}, ("token arrays",)),
    ({"model": MINILM, "input": [1, 2]}, ("token arrays",)),
    ({"model": MINILM, "input": {"a": 1}}, ("'input' must be a list of strings", "got object")),
    ({"model": MINILM, "input": []}, ("empty list",)),
    ({"model": MINILM, "input": "x", "encoding_format": "int8"}, ("'encoding_format'",)),
])
def test_openai_wrong_types_are_400(http: httpx.Client, banner: Banner, body: dict[str, Any],
                                    parts: tuple[str, ...]) -> None:
    answer = http.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {banner.key}"})
    assert_error(answer, 400, *parts)


# -- odd but valid texts -----------------------------------------------------------------------------


def test_a_1mb_string_is_truncated_and_embedded(http: httpx.Client, nlp_path: str, banner: Banner,
                                                embed: Embed) -> None:
    words = "protein intake in adults and the elderly "
    text = "passage: " + (words * (1_000_000 // len(words) + 1))[:1_000_000]
    answer = http.post(nlp_path, json={"inputs": [text, "query: short"]}, headers={"key": banner.key})
    assert answer.status_code == 200, answer.text[:500]
    assert_vectors(answer.json()["data"], embed([text, "query: short"]))


UNUSUAL = [
    "query: 女性はタンパク質をどれくらい摂るべきですか",
    "passage: Wie viel Eiweiß sollte eine Frau essen? Größe, Gewicht – ÄÖÜ ß",
    "query: كم من البروتين يجب أن تأكل المرأة",
    "query: Сколько белка нужно женщине? 🥩🥚🥛",
    "query: tab\there, newline\nthere, nul\x00, bell\x07, escape\x1b[31m, zero-width\u200b, rtl\u202e",
    "\x00\x01\x02",
    "   ",
    "",
    "query: \ud7ff\ufeff\U0001f600 e\u0301 combining",
]


@pytest.mark.parametrize("route", ["nlp", "openai"])
def test_non_english_and_control_characters(http: httpx.Client, nlp_path: str, banner: Banner, embed: Embed,
                                            route: str) -> None:
    if route == "nlp":
        answer = http.post(nlp_path, json={"inputs": UNUSUAL}, headers={"key": banner.key})
        rows = answer.json()["data"] if answer.status_code == 200 else None
    else:
        answer = http.post("/v1/embeddings", json={"model": MINILM, "input": UNUSUAL},
                           headers={"Authorization": f"Bearer {banner.key}"})
        rows = [d["embedding"] for d in answer.json()["data"]] if answer.status_code == 200 else None
    assert answer.status_code == 200, answer.text
    assert_vectors(rows, embed(UNUSUAL))


def test_raw_utf8_body_without_escapes(http: httpx.Client, nlp_path: str, banner: Banner, embed: Embed) -> None:
    body = json.dumps({"inputs": UNUSUAL[:4]}, ensure_ascii=False).encode("utf-8")
    answer = http.post(nlp_path, content=body, headers={"key": banner.key, "Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert_vectors(answer.json()["data"], embed(UNUSUAL[:4]))


# -- body limit --------------------------------------------------------------------------------------


def test_body_over_the_default_limit_is_413(http: httpx.Client, nlp_path: str, banner: Banner) -> None:
    body = json.dumps({"inputs": ["x" * (9 * 1024 * 1024)]}).encode()
    assert_error(http.post(nlp_path, content=body, headers={"key": banner.key, "Content-Type": "application/json"}),
                 413, "limit", str(8 * 1024 * 1024))


def test_streamed_body_over_the_default_limit_is_413(http: httpx.Client, nlp_path: str, banner: Banner) -> None:
    """Chunked transfer (no Content-Length): the limit is enforced while reading."""
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": ["'
        for _ in range(9):
            yield b"x" * (1024 * 1024)
        yield b'"]}'

    answer = http.post(nlp_path, content=chunks(), headers={"key": banner.key, "Content-Type": "application/json"})
    assert_error(answer, 413, "over the limit", str(8 * 1024 * 1024))


@pytest.fixture(scope="module")
def small_app(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[tuple[TestClient, str, str]]:
    """The app in-process (tiny random checkpoint) with a 2000-byte body limit: (client, nlp path, key)."""
    data_dir = tmp_path_factory.mktemp("small")
    store = Store(stores.store_for(data_dir))
    store.create_project("p")
    endpoint, key = store.create_endpoint("p", "tiny", str(tiny_dir), 32)
    settings = ServeSettings(data_dir=data_dir, max_body_bytes=2000, default_model=str(tiny_dir),
                             engine=EngineSettings(model=str(tiny_dir), device="cpu"))
    app = create_app(settings, store)
    with TestClient(app) as client:
        assert state_of(app).pool.wait(60)
        yield client, f"/api/predict/nlp/p/{endpoint.name}", key
    store.close()


def test_body_over_a_small_limit_is_413(small_app: tuple[TestClient, str, str]) -> None:
    client, path, key = small_app
    ok = client.post(path, json={"inputs": ["query: fits"]}, headers={"key": key})
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["data"][0]) == 32
    big = {"inputs": ["x" * 2500]}
    assert_error(client.post(path, json=big, headers={"key": key}), 413, "the limit is 2000")  # type: ignore[arg-type]
    streamed = client.post(path, content=iter([b'{"inputs": ["', b"x" * 2500, b'"]}']),
                           headers={"key": key, "Content-Type": "application/json"})
    assert_error(streamed, 413, "over the limit of 2000 bytes")  # type: ignore[arg-type]
    openai_big = client.post("/v1/embeddings", json={"model": "tiny", "input": "x" * 2500},
                             headers={"Authorization": f"Bearer {key}"})
    assert_error(openai_big, 413)  # type: ignore[arg-type]
    assert client.post(path, json={"inputs": ["query: still fine"]}, headers={"key": key}).status_code == 200
