"""Schema-driven fuzzing (schemathesis) of the real app in-process, over every operation of /openapi.json, with
a valid endpoint key and admin token: generated valid and invalid requests must never get a 5xx, and every
answer must match what the schema declares (status, content type, body). Bounded to well under a minute."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks

from e5studio.app import create_app
from e5studio.control.store import Store
from e5studio.serving.state import state_of
from e5studio.settings import EngineSettings, ServeSettings
from tests import stores

CREDENTIALS: dict[str, str] = {}
CHECKS = [schemathesis.checks.not_a_server_error, openapi_checks.status_code_conformance,
          openapi_checks.content_type_conformance, openapi_checks.response_schema_conformance]
INFERENCE_PREFIXES = ("/api/predict/", "/api/v2/predict/")


class _NoLifespan:
    """The app for schemathesis, whose ASGI client enters a lifespan per call: the lifespan ran once (the
    fixture's), later ones are acknowledged without stopping the model pool."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[Any]:
    """The app serving the tiny random model: statuses and answers' shapes are what is checked, not the vectors,
    and every generated text gets embedded (generated bodies run up to the 256 KiB limit: on MiniLM, waiting for
    those vectors was half of this module's time)."""
    model = str(tiny_dir)
    data_dir = tmp_path_factory.mktemp("fuzz")
    store = Store(stores.store_for(data_dir))
    store.create_project("p")
    _, key = store.create_endpoint("p", "mini", model, 32)
    token = store.ensure_admin_token()
    assert token is not None
    CREDENTIALS.update(key=key, token=token)
    settings_ = ServeSettings(data_dir=data_dir, default_model=model, max_body_bytes=256 * 1024,
                              engine=EngineSettings(model=model, device="cpu"))
    app = create_app(settings_, store)
    with TestClient(app):  # runs the lifespan: the model loads
        assert state_of(app).pool.wait(120)
        yield _NoLifespan(app)
    store.close()


def _fuzz(case: Any) -> None:
    if case.path.startswith(INFERENCE_PREFIXES) and isinstance(case.path_parameters, dict):
        case.path_parameters = {"project": "p", "endpoint": "mini"}  # a real endpoint: the texts get embedded
    if case.path == "/v1/embeddings" and isinstance(case.body, dict) and len(str(case.body)) % 2 == 0:
        case.body["model"] = "mini"
    if case.path.startswith("/api/admin"):
        headers = {"Authorization": f"Bearer {CREDENTIALS['token']}"}
    else:
        headers = {"key": CREDENTIALS["key"], "Authorization": f"Bearer {CREDENTIALS['key']}"}
    case.call_and_validate(headers=headers, checks=CHECKS)


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_no_5xx_and_answers_match_the_schema(fuzz_app: Any, mode: GenerationMode) -> None:
    """Every operation, valid (positive) and invalid (negative) requests, 15 examples each (derandomized)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12, [op.label for op in operations]
    fuzzed = 0
    for operation in operations:
        run = settings(max_examples=15, deadline=None, derandomize=True, database=None,
                       suppress_health_check=list(HealthCheck))(given(case=operation.as_strategy(mode))(_fuzz))
        try:
            run()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label  # nothing in it can be made invalid
            continue
        except Exception as exc:
            raise AssertionError(f"{mode.value} {operation.label}: {exc}") from exc
        fuzzed += 1
    assert fuzzed >= 9, fuzzed  # the operations with a body, path or query parameters
