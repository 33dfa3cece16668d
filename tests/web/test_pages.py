"""What the UI's pages say, over plain HTTP against a real ``e5studio serve`` and on a real control store:
the try-it box's roles (vectors against ``Embedder``), the endpoint status shown while a model loads, short
reasons in tables, the name pattern against the store's rule, the favicon, the footer's model, the train
form's defaults against the README's measured values.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from e5studio.control.database import NAME_PATTERN
from e5studio.control.job_records import KIND_TRAIN
from e5studio.control.replicas import MODEL_FAILED, MODEL_LOADING, MODEL_READY
from e5studio.control.store import FAILED, LIVE, Store
from e5studio.engine.embedder import Embedder
from e5studio.jobspec.train_params import ALL_PARAMS, SMALL_MODEL_DEFAULTS
from e5studio.serving.edge import EndpointStats
from e5studio.web.endpoints import LOADING, NAME_INPUT_PATTERN, REASON_SHORT_CHARS, endpoint_json, short_reason
from e5studio.web.jobs import small_models
from tests import stores
from tests.serving.server import ServerProcess
from tests.web.test_auth import login

README = Path(__file__).resolve().parents[2] / "README.md"
ICO_MAGIC = b"\x00\x00\x01\x00"


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store.open(stores.store_for(tmp_path))


def test_a_live_endpoint_says_loading_until_its_model_is_ready_on_a_replica(store: Store) -> None:
    store.create_project("p")
    endpoint, _ = store.create_endpoint("p", "e", "all-minilm-l6-v2", 32)
    store.set_status(endpoint.id, LIVE)
    endpoint = store.get_endpoint_by_id(endpoint.id)
    ui = SimpleNamespace(store=store, endpoint_stats=EndpointStats().get)

    def shown() -> tuple[str, str]:
        view = endpoint_json(ui, endpoint)  # type: ignore[arg-type]
        assert view["status"] == LIVE  # the store's status is unchanged; only what the page shows differs
        return view["shown_status"], view["replicas"]

    store.heartbeat_replica("r1", {})  # the replica has not loaded it yet (right after creation)
    assert shown() == (LOADING, "loading the model: ready on 0 of 1 replica")
    store.heartbeat_replica("r1", {endpoint.id: MODEL_LOADING})
    assert shown() == (LOADING, "loading the model: ready on 0 of 1 replica")
    store.heartbeat_replica("r1", {endpoint.id: MODEL_READY})
    assert shown() == (LIVE, "ready on 1 of 1 replica")
    store.heartbeat_replica("r2", {endpoint.id: MODEL_LOADING})
    assert shown() == (LIVE, "ready on 1 of 2 replicas")  # served by one: Live
    store.heartbeat_replica("r1", {endpoint.id: MODEL_FAILED})
    store.heartbeat_replica("r2", {endpoint.id: MODEL_FAILED})
    assert shown() == (LIVE, "ready on 0 of 2 replicas")  # failed everywhere is not "loading"


def test_a_short_reason_is_the_first_line() -> None:
    reason = "cannot load model 'x' (x); tried:\n- local directory /a (not found)\n- the hub (offline)"
    assert short_reason(reason) == "cannot load model 'x' (x); tried …"
    assert short_reason("model directory /a does not exist") == "model directory /a does not exist"
    assert short_reason("") == ""
    long_line = "word " * 100
    cut = short_reason(long_line)
    assert cut.endswith(" …") and len(cut) <= REASON_SHORT_CHARS + 2 and long_line.startswith(cut[:-2]), cut


def test_the_name_pattern_of_the_forms_is_the_stores_rule() -> None:
    """The HTML pattern (implicitly anchored by the browser) accepts exactly the names the store accepts;
    the browser test checks that Chromium compiles it (the ``v`` flag) and applies it."""
    store_rule, form_rule = re.compile(NAME_PATTERN), re.compile(f"^(?:{NAME_INPUT_PATTERN})$")
    for name in ("a", "A9", "ok_name-1.2", "x" * 64, "x" * 65, "-a", ".a", "_a", "a b", "a/b", "a-", "é", ""):
        assert bool(form_rule.fullmatch(name)) == bool(store_rule.fullmatch(name)), name


def test_the_small_model_defaults_are_the_readmes_measured_values() -> None:
    """The train form's MiniLM defaults are the values the README measured and recommends for MiniLM."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    found = re.search(r"pass `--lr (\S+) --temperature (\S+)` for MiniLM", text)
    assert found, "the README no longer recommends an lr and a temperature for MiniLM"
    assert {"lr": float(found.group(1)), "temperature": float(found.group(2))} == SMALL_MODEL_DEFAULTS
    assert all(SMALL_MODEL_DEFAULTS[name] != ALL_PARAMS[name].default for name in SMALL_MODEL_DEFAULTS)


def test_fine_tunes_of_a_small_model_get_its_defaults(store: Store) -> None:
    """A fine-tune's base decides, through fine-tunes of fine-tunes; other models keep the E5 recipe's."""
    def finished(model: str, final_dir: str) -> None:
        job = store.create_job(KIND_TRAIN, model, final_dir + "-run", {})
        store.update_job(job.id, metrics={"final_dir": final_dir})

    finished("all-minilm-l6-v2", "/runs/a/final")
    finished("/runs/a/final", "/runs/b/final")  # a fine-tune of the fine-tune
    finished("e5-large-v2", "/runs/c/final")
    finished("/runs/c/final", "/runs/d/final")
    finished("/runs/e/final", "/runs/e/final")  # a job naming its own output as its base ends the walk
    small = small_models(store.list_jobs(KIND_TRAIN))
    assert {"all-minilm-l6-v2", "minilm", "sentence-transformers/all-MiniLM-L6-v2", "/runs/a/final",
            "/runs/b/final"} == small


def test_favicon(http: httpx.Client) -> None:
    answer = http.get("/favicon.ico")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/x-icon"
    assert answer.content.startswith(ICO_MAGIC)
    assert '<link rel="icon" href="/favicon.ico"' in http.get("/ui/login").text


def test_footer_names_the_served_model_to_logged_in_users(http: httpx.Client, ui_server: ServerProcess) -> None:
    assert "serving" not in _footer(http.get("/ui/login").text)  # nothing about the deployment before login
    login(http, ui_server.admin_token)
    footer = _footer(http.get("/ui/projects").text)
    # the Live endpoints' models: the server's --model (other tests of this module may deploy more)
    served = footer.partition("serving ")[2].split(", ")
    assert "all-minilm-l6-v2" in served and "E5 Large" not in footer, footer


def test_train_form_defaults_follow_the_servers_model(http: httpx.Client, ui_server: ServerProcess) -> None:
    """Without JavaScript too: the form opens with the defaults of the preselected base model (MiniLM here)."""
    login(http, ui_server.admin_token)
    page = http.get("/ui/jobs").text
    for name, value in SMALL_MODEL_DEFAULTS.items():
        assert re.search(rf'<input name="{name}" value="{re.escape(str(value))}"', page), name
    assert "(default )" not in page


def test_try_it_embeds_each_text_with_its_own_role(http: httpx.Client, ui_server: ServerProcess,
                                                   minilm_embedder: Embedder) -> None:
    csrf = login(http, ui_server.admin_token)
    endpoint = next(e for e in http.get("/ui/api/endpoints").json()["endpoints"] if e["status"] == LIVE)
    url = f"/ui/api/endpoints/{endpoint['id']}/try"

    def try_it(body: dict[str, Any]) -> httpx.Response:
        return http.post(url, json=body, headers={"x-csrf-token": csrf})

    texts = ["how much protein should a female eat", "Women need about 46 grams of protein per day."]
    answer = try_it({"texts": texts, "input_types": ["query", "passage"]})
    assert answer.status_code == 200, answer.text
    prefixed = ["query: " + texts[0], "passage: " + texts[1]]
    assert answer.json()["texts"] == prefixed
    rows = minilm_embedder.embed(prefixed)
    assert answer.json()["cosine"] == pytest.approx(float(rows[0] @ rows[1]), abs=1e-5)
    as_typed = try_it({"texts": ["passage: already prefixed"], "input_types": ["none"]}).json()
    assert as_typed["texts"] == ["passage: already prefixed"] and "cosine" not in as_typed
    assert try_it({"texts": texts}).json()["texts"] == texts  # no roles: as typed

    for body, message in (({"texts": texts, "input_types": ["query"]}, "one input type per text"),
                          ({"texts": texts, "input_types": "query"}, "one input type per text"),
                          ({"texts": texts, "input_type": "query"}, "replaced by 'input_types'"),
                          ({"texts": texts, "input_types": ["query", "document"]}, "query, passage or none"),
                          ({"texts": [], "input_types": []}, "non-empty list of strings")):
        refused = try_it(body)
        assert refused.status_code == 400 and message in refused.json()["error"]["message"], (body, refused.text)


def test_a_failed_endpoint_page_has_no_try_it_box(http: httpx.Client, ui_server: ServerProcess) -> None:
    """Its whole reason is on the page, lines kept (a pre-wrapped block), and it offers no try-it box."""
    csrf = login(http, ui_server.admin_token)
    live = next(e for e in http.get("/ui/api/endpoints").json()["endpoints"] if e["status"] == LIVE)
    assert '<section class="card" id="try-it">' in http.get(f"/ui/endpoints/{live['id']}").text
    made = http.post("/ui/endpoints", data={"csrf_token": csrf, "project": "default", "name": "pages-cannot-load",
                                            "model_other": "e5studio-tests/no-such-model", "batch_size": "32"})
    assert made.status_code == 303, made.text[:500]
    deadline = time.monotonic() + 60
    while (failed := next(e for e in http.get("/ui/api/endpoints").json()["endpoints"]
                          if e["name"] == "pages-cannot-load"))["status"] != FAILED:
        assert time.monotonic() < deadline, failed
        time.sleep(0.2)
    assert failed["reason"].count("\n") >= 2, failed["reason"]
    page = http.get(made.headers["location"]).text
    assert '<section class="card" id="try-it" hidden>' in page
    shown = re.search(r'<div class="reason" data-field="reason" id="endpoint-reason">(.*?)</div>', page, re.S)
    assert shown and html.unescape(shown.group(1)) == failed["reason"]
    assert failed["reason_short"] == short_reason(failed["reason"])
    project = html.unescape(http.get("/ui/projects/default").text)
    shorts = re.findall(r'data-field="reason_short"[^>]*>(.*?)</small>', project, re.S)
    assert failed["reason_short"] in shorts, shorts  # its first line in the table, the rest not
    assert failed["reason"].splitlines()[1].strip() not in project


def _footer(page: str) -> str:
    found = re.search(r"<footer>(.*?)</footer>", page, re.S)
    assert found, page[-500:]
    return re.sub(r"<[^>]+>", "", found.group(1))
