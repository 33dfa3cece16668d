"""The New endpoint form's input type (issue 23, point 6), over plain HTTP against a real ``e5studio serve``: the
form offers query / passage / none (none checked: today's behaviour), stores the choice with the endpoint, shows
it on the endpoint's page, and the endpoint then embeds with that prefix (vectors against ``Embedder``);
a value outside the three is refused on the form, naming the field, with nothing created."""

from __future__ import annotations

import re
import time

import httpx
import numpy as np

from e5studio.control.store import LIVE
from e5studio.engine.embedder import Embedder
from tests.serving.server import ServerProcess
from tests.web.test_auth import login

KEY_RE = re.compile(r'<code class="secret" id="key-value">([^<]+)</code>')


def _radios(page: str) -> dict[str, bool]:
    """The input_type radios of a page: value -> checked."""
    return {m.group(2): bool(m.group(3)) for m in
            re.finditer(r'<input type="radio" name="input_type" value="(([a-z]+))"( checked)?', page)}


def test_the_new_endpoint_form_records_the_input_type(http: httpx.Client, ui_server: ServerProcess,
                                                      minilm_embedder: Embedder) -> None:
    csrf = login(http, ui_server.admin_token)
    form = http.get("/ui/endpoints/new?project=default")
    assert form.status_code == 200 and 'id="input-type"' in form.text
    choices = re.search(r'<select name="model">(.*?)</select>', form.text, re.S)
    model = re.search(r'<option value="([^"]+)" selected>', choices.group(1) if choices else "")  # the server's
    assert model, form.text
    assert _radios(form.text) == {"none": True, "query": False, "passage": False}

    fields = {"csrf_token": csrf, "project": "default", "model": model.group(1), "batch_size": "32"}
    refused = http.post("/ui/endpoints", data={**fields, "name": "form-bad-role", "input_type": "document"})
    assert refused.status_code == 400 and "input_type must be" in refused.text, refused.text[:500]
    assert _radios(refused.text) == {"none": False, "query": False, "passage": False}  # the sent value kept
    assert all(e["name"] != "form-bad-role" for e in http.get("/ui/api/endpoints").json()["endpoints"])

    made = http.post("/ui/endpoints", data={**fields, "name": "form-queries", "input_type": "query"})
    assert made.status_code == 303, made.text[:500]
    page = http.get(made.headers["location"]).text
    key = KEY_RE.search(page)
    assert key and '<dd id="endpoint-input-type">query</dd>' in page
    endpoint_id = made.headers["location"].rsplit("/", 1)[-1]
    deadline = time.monotonic() + 120
    while next(e for e in http.get("/ui/api/endpoints").json()["endpoints"] if e["id"] == endpoint_id)[
            "shown_status"] != LIVE:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    texts = ["how much protein should a female eat", "query: already prefixed"]
    answer = http.post(f"/api/predict/nlp/default/{endpoint_id}", json={"inputs": texts},
                       headers={"key": key.group(1)})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(np.asarray(answer.json()["data"], dtype=np.float32),
                               minilm_embedder.embed(texts, "query"), atol=1e-5)

    plain = http.post("/ui/endpoints", data={**fields, "name": "form-as-sent"})  # no choice sent: none
    assert plain.status_code == 303, plain.text[:500]
    assert '<dd id="endpoint-input-type">none</dd>' in http.get(plain.headers["location"]).text
