"""The web UI in a real Chromium (Debian's, driven by Playwright) against a real ``e5studio serve``.

Each test walks a user's path through the pages and saves a screenshot of every page it sees in
``artifacts/ui/`` (see conftest). API answers are checked with a plain HTTP client against references:
the vectors the endpoint returns equal ``Embedder`` in-process.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import expect

from e5studio.engine.embedder import Embedder
from e5studio.jobspec.train_params import ADVANCED_FIELDS, ALL_PARAMS, SMALL_MODEL_DEFAULTS, TRAIN_PARAMS
from e5studio.settings import EngineSettings
from tests.jobs.toy import tiny_checkpoint, toy_dataset, write_jsonl
from tests.serving.server import ServerProcess, assert_error, assert_vectors
from tests.web.conftest import console_errors, watched_context

PLATFORM_EXAMPLE = Path(__file__).resolve().parents[1] / "jobs" / "platform_example"
NOT_CACHED = "e5studio-tests/no-such-model"  # a hub id in no cache: loading fails offline, with a long reason
TRAIN_TIMEOUT_MS = 240_000


def shot(page: Any, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def log_in(page: Any, server: ServerProcess, artifacts: Path | None = None) -> None:
    page.goto("/ui/projects")
    assert "/ui/login?next=/ui/projects" in page.url
    if artifacts is not None:
        shot(page, artifacts, "01-login")
    page.fill("input[name=token]", server.admin_token)
    page.click("form[action='/ui/login'] button[type=submit]")
    page.wait_for_url("**/ui/projects")


def wait_live(page: Any) -> None:
    """Until the endpoint is Live; by then its model is ready on this server (until then the page says it is
    loading, never Live beside "ready on 0 of 1 replica")."""
    expect(page.locator("#endpoint-status")).to_have_text("Live", timeout=120_000)
    assert page.inner_text("#endpoint-replicas") == "ready on 1 of 1 replica", page.inner_text("#endpoint-replicas")


def check_no_dataset_yet(page: Any, url: str, form: str) -> None:
    """A job form without any dataset says so, links to the Datasets page and cannot be submitted."""
    page.goto(url)
    assert page.inner_text(f"{form} select[name=dataset]").strip() == "no dataset yet"
    assert page.get_attribute(f"{form} #no-dataset a", "href") == "/ui/datasets"
    expect(page.locator(f"{form} button[type=submit]")).to_be_disabled()


def check_train_form(page: Any) -> None:
    """Labels in words; the defaults follow the chosen base model (the measured small-model values for
    MiniLM, the E5 recipe's otherwise), say which they are, and never overwrite what the user typed; the rarely
    changed settings are folded under Advanced."""
    form = "#new-job"
    labels = page.locator(f"{form} label:has(input[data-default])").evaluate_all(
        "labels => labels.map((label) => label.firstChild.textContent.trim())")
    assert len(labels) == len(TRAIN_PARAMS), labels
    assert not [label for label in labels if "_" in label or label in TRAIN_PARAMS], labels
    assert "Learning rate" in labels and "CPU threads" in labels, labels
    threads_note = page.text_content(f"{form} label:has(input[name=threads]) .default-note")
    assert threads_note == "Empty: one per core.", threads_note
    assert "(default )" not in page.inner_text(form)
    for name in ADVANCED_FIELDS:  # folded until Advanced is opened
        expect(page.locator(f"{form} input[name={name}]")).to_be_hidden()
    expect(page.locator(f"{form} input[name=epochs]")).to_be_visible()

    small = {name: str(value) for name, value in SMALL_MODEL_DEFAULTS.items()}
    recipe = {name: str(ALL_PARAMS[name].default) for name in SMALL_MODEL_DEFAULTS}
    assert small != recipe

    def values() -> dict[str, str]:
        return {name: page.input_value(f"{form} input[name={name}]") for name in SMALL_MODEL_DEFAULTS}

    assert page.input_value(f"{form} select[name=model]") == "all-minilm-l6-v2"  # the server's model
    assert values() == small
    assert "measured on all-MiniLM-L6-v2" in page.inner_text(f"{form} label:has(input[name=lr]) .default-note")
    page.select_option(f"{form} select[name=model]", "e5-large-v2")
    assert values() == recipe
    assert "the E5 recipe" in page.inner_text(f"{form} label:has(input[name=lr]) .default-note")
    page.fill(f"{form} input[name=lr]", "3e-5")  # the user's value stays
    page.select_option(f"{form} select[name=model]", "all-minilm-l6-v2")
    assert values() == {**small, "lr": "3e-5"}
    page.fill(f"{form} input[name=model_other]", "intfloat/e5-base-v2")  # another model typed: its defaults
    assert values() == {**recipe, "lr": "3e-5"}
    page.fill(f"{form} input[name=model_other]", "sentence-transformers/all-MiniLM-L6-v2")
    assert values() == {**small, "lr": "3e-5"}
    page.fill(f"{form} input[name=model_other]", "")
    page.fill(f"{form} input[name=lr]", small["lr"])


def test_endpoint_with_batch_size_one(page: Any, ui_server: ServerProcess, artifacts: Path,
                                      minilm_embedder: Embedder) -> None:
    log_in(page, ui_server, artifacts)
    shot(page, artifacts, "02-projects")
    page.click("#projects a:text('default')")
    page.wait_for_url("**/ui/projects/default")
    page.click("text=New endpoint")
    # the name's pattern compiles under Chromium's v flag (else it logs a console error and checks nothing)
    name_input = page.locator("#new-endpoint input[name=name]")
    for name, valid in (("-starts-with-hyphen", False), ("has space", False), ("x" * 65, False),
                        ("ok_name-1.2", True), ("x" * 64, True)):
        name_input.fill(name)
        assert name_input.evaluate("input => input.validity.valid") is valid, name
    page.fill("#new-endpoint input[name=name]", "live-one")
    page.fill("#new-endpoint input[name=description]", "answers one query at a time")
    page.select_option("#new-endpoint select[name=model]", "all-minilm-l6-v2")
    page.check("#new-endpoint input[name=batch_size][value='1']")
    assert "live service" in page.inner_text("#new-endpoint fieldset")
    assert "knowledge base" in page.inner_text("#new-endpoint fieldset")
    shot(page, artifacts, "03-new-endpoint")
    page.click("#new-endpoint button[type=submit]")

    # the key is shown once, with a ready curl line; the status turns Live without a reload
    key = page.inner_text("#key-value").strip()
    assert key.startswith("e5s_")
    ui_server.remember(key)
    assert key in page.inner_text("#curl-line")
    wait_live(page)
    url = page.inner_text("#endpoint-url").strip()
    shot(page, artifacts, "04-endpoint-created")

    with httpx.Client(timeout=60, trust_env=False) as client:
        one = client.post(url, json={"inputs": ["query: how much protein should a female eat"]}, headers={"key": key})
        assert one.status_code == 200, one.text
        assert_vectors(one.json()["data"], minilm_embedder.embed(["query: how much protein should a female eat"]))
        two = client.post(url, json={"inputs": ["query: a", "query: b"]}, headers={"key": key})
        assert_error(two, 400, "Expected a Tensor with batch size <= 1, got batch size: 2")

    # shown once: not after a reload; request count and latency appear
    page.reload()
    assert page.query_selector("#new-key") is None
    assert key not in page.content()
    expect(page.locator("[data-field=requests]")).to_have_text("2")
    assert page.inner_text("[data-field=errors]") == "1"
    assert "since" in page.inner_text("dt:has(+ dd [data-field=requests])")

    # try it: the sample pairs a query with a passage, each embedded with its own prefix; the dimension and
    # the cosine of the two are the model's
    assert page.input_value("#try-form select[name=role_a]") == "query"
    assert page.input_value("#try-form select[name=role_b]") == "passage"
    page.click("#try-form button[type=submit]")
    page.wait_for_selector("#try-cosine")
    assert page.inner_text("#try-dimension").startswith("Dimension 384")
    texts = ["query: " + page.input_value("#try-form textarea[name=text_a]"),
             "passage: " + page.input_value("#try-form textarea[name=text_b]")]
    shown_texts = page.locator("#try-result p.vector").all_inner_texts()
    assert [t.split(" → ")[0] for t in shown_texts] == [json.dumps(t) for t in texts], shown_texts
    rows = minilm_embedder.embed(texts)
    shown = float(page.inner_text("#try-cosine").split(":")[1])
    assert abs(shown - float(rows[0] @ rows[1])) < 1e-4
    shot(page, artifacts, "05-endpoint-try-it")

    # both texts as queries: the other role changes the cosine to that of the two queries
    page.select_option("#try-form select[name=role_b]", "query")
    page.click("#try-form button[type=submit]")
    expect(page.locator("#try-result p.vector").nth(1)).to_contain_text('"query: As a general')
    rows = minilm_embedder.embed([texts[0], "query: " + texts[1].removeprefix("passage: ")])
    shown = float(page.inner_text("#try-cosine").split(":")[1])
    assert abs(shown - float(rows[0] @ rows[1])) < 1e-4

    # the project page lists it, Live
    page.click(".crumbs a")
    row = page.locator("tr", has_text="live-one")
    row.locator("[data-field=status]:text('Live')").wait_for()
    assert "since start" in page.inner_text("#endpoints thead")
    shot(page, artifacts, "06-project-endpoints")

    # a model that cannot be loaded: Failed, with the whole reason (its lines kept) and no try-it box, without
    # reloading the page
    page.goto("/ui/endpoints/new?project=default")
    page.fill("#new-endpoint input[name=name]", "broken-model")
    page.fill("#new-endpoint input[name=model_other]", NOT_CACHED)
    page.click("#new-endpoint button[type=submit]")
    expect(page.locator("#endpoint-status")).to_have_text("Failed", timeout=60_000)
    expect(page.locator("#try-it")).to_be_hidden()
    with httpx.Client(base_url=ui_server.base_url, timeout=60, trust_env=False) as client:
        client.cookies.update({c["name"]: c["value"] for c in page.context.cookies()})
        stored = next(e for e in client.get("/ui/api/endpoints").json()["endpoints"] if e["name"] == "broken-model")
    reason = stored["reason"]
    assert NOT_CACHED in reason and reason.count("\n") >= 2, reason  # a long reason, over several lines
    expect(page.locator("#endpoint-reason")).to_have_text(reason)
    assert page.inner_text("#endpoint-reason").count("\n") == reason.count("\n")  # shown with its line breaks
    shot(page, artifacts, "06b-endpoint-failed")
    page.reload()  # failed when the page is rendered: no try-it box either
    expect(page.locator("#try-it")).to_be_hidden()

    # in the project's table: its first line only (the page has it whole), and the other columns keep their
    # width: every endpoint name stays on one line
    page.click(".crumbs a")
    failed_row = page.locator("#endpoints tr", has_text="broken-model")
    first_line = reason.splitlines()[0]
    expect(failed_row.locator("[data-field=reason_short]")).to_have_text(re.compile("^" + re.escape(
        first_line.rstrip(" :;,")[:60])))
    short = failed_row.locator("[data-field=reason_short]").inner_text()
    assert short.endswith("…") and len(short) <= len(first_line) + 2 and reason.splitlines()[1] not in short, short
    heights = [box["height"] for box in (cell.bounding_box() for cell in page.locator("#endpoints td.name a").all())
               if box]
    line_height = page.locator("#endpoints td.name a").first.evaluate(
        "a => parseFloat(getComputedStyle(a).lineHeight) || a.getBoundingClientRect().height")
    assert heights and max(heights) < 1.5 * line_height, (heights, line_height)
    shot(page, artifacts, "06c-project-failed-endpoint")


def test_datasets_errors_by_line_then_a_valid_one(page: Any, ui_server: ServerProcess, artifacts: Path,
                                                  tmp_path: Path) -> None:
    log_in(page, ui_server)
    page.goto("/ui/datasets")
    form = "#upload-dataset"
    page.fill(f"{form} input[name=name]", "broken")
    page.set_input_files(f"{form} input[name=passages]", str(PLATFORM_EXAMPLE / "passages.jsonl"))
    page.set_input_files(f"{form} input[name=train]", str(PLATFORM_EXAMPLE / "train.jsonl"))
    console_errors(page).expect_error_page(400)  # the form again, with the problems, answered with 400
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector("#validation")
    errors = page.locator("ul.problems li.error").all_inner_texts()
    assert len(errors) == 2, errors
    assert errors[0].startswith("error: passages.jsonl:2: malformed JSON: the value of \"contents\""), errors
    assert "never closed" in errors[0]
    assert errors[1].startswith("error: train.jsonl:2: malformed JSON at column 2"), errors
    assert "not recorded: 2 errors" in page.inner_text("#validation")
    shot(page, artifacts, "07-dataset-errors")
    assert page.locator("#datasets tr[data-dataset^='broken']").count() == 0

    toy = toy_dataset(tmp_path / "toy")
    page.fill(f"{form} input[name=name]", "toy")
    page.fill(f"{form} input[name=description]", "24 generated queries")
    page.set_input_files(f"{form} input[name=passages]", str(toy / "passages.jsonl"))
    page.set_input_files(f"{form} input[name=train]", str(toy / "train.jsonl"))
    page.click(f"{form} button[type=submit]")
    page.wait_for_url("**/ui/datasets?added=*")
    row = page.locator("#datasets tr[data-dataset='toy@1'] td").all_inner_texts()
    assert row[1:5] == ["32", "24", "29", "120"], row
    shot(page, artifacts, "08-datasets")

    # over the upload limit (1 MiB in this server): refused, nothing recorded, the server goes on
    big = write_jsonl(tmp_path / "big" / "passages.jsonl", [{"contents": "word " * 200}] * 1200)
    page.set_input_files(f"{form} input[name=passages]", str(big))
    page.set_input_files(f"{form} input[name=train]", str(toy / "train.jsonl"))
    page.fill(f"{form} input[name=name]", "too-big")
    console_errors(page).expect_error_page(413)
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector("text=Error 413")
    assert "limit" in page.inner_text("main")
    shot(page, artifacts, "08b-upload-over-limit")
    page.goto("/ui/datasets")
    assert page.locator("#datasets tr[data-dataset^='too-big']").count() == 0


def test_train_job_to_endpoint(page: Any, ui_server: ServerProcess, artifacts: Path, tmp_path: Path) -> None:
    toy = toy_dataset(tmp_path / "train-data")
    base = tiny_checkpoint(tmp_path / "tiny", dropout=0.0)
    log_in(page, ui_server)
    page.goto("/ui/datasets")
    page.fill("#path-dataset input[name=name]", "toy-path")
    page.fill("#path-dataset input[name=path]", str(toy))
    page.click("#path-dataset button[type=submit]")
    page.wait_for_url("**/ui/datasets?added=*")

    page.goto("/ui/jobs")
    job_form = "#new-job"
    check_train_form(page)
    page.select_option(f"{job_form} select[name=dataset]", label="toy-path@1 (24 queries)")
    page.fill(f"{job_form} input[name=model_other]", str(base))
    ood = shutil.copytree(toy, tmp_path / "ood")  # a second evaluation set (the same texts: the same changes)
    page.fill(f"{job_form} textarea[name=eval_dir]", f"{toy}\n{ood}")
    page.click("#advanced-settings summary")
    for name, value in {"epochs": "2", "batch_size": "8", "train_n_passages": "4", "lr": "1e-3",
                        "query_max_length": "16", "passage_max_length": "32", "save_every": "4"}.items():
        page.fill(f"{job_form} input[name={name}]", value)
    shot(page, artifacts, "09-new-train-job")
    page.click(f"{job_form} button[type=submit]")
    page.wait_for_url("**/ui/jobs/*")
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=TRAIN_TIMEOUT_MS)
    # charts drawn: loss per step (3 steps per epoch, 2 epochs), nDCG@10 before training and after each epoch
    # (one line per evaluation set), the table of every set against the base model, the deploy gate's verdict
    expect(page.locator("#ndcg-chart")).to_have_attribute("data-points", "6")
    assert page.get_attribute("#ndcg-chart", "data-series") == "2"
    assert page.get_attribute("#loss-chart", "data-points") == "6"
    assert page.locator("#loss-chart svg path.line").count() == 1
    assert page.locator("#ndcg-chart svg circle.dot").count() == 6
    colours = page.locator("#ndcg-chart svg path.line").evaluate_all(
        "lines => lines.map((line) => getComputedStyle(line).stroke)")
    assert len(set(colours)) == 2, colours  # one colour per evaluation set (from the stylesheet: CSP)
    header = page.inner_text("#evaluation-table thead")
    assert "train-data (in-domain)" in header and "ood" in header, header
    labels = page.locator("#evaluation-table tbody td:first-child").all_inner_texts()
    assert labels[:3] == ["base model", "epoch 1", "epoch 2"] and labels[-1].startswith("final"), labels
    expect(page.locator("#deploy-gate")).to_have_class("gate-pass")
    assert page.inner_text("#job-steps") == "6 / 6"
    assert page.inner_text("#job-log").strip(), "no log lines shown"
    shot(page, artifacts, "10-train-job-finished")

    # deploy as endpoint: the key once, Live, and the served vectors are the fine-tuned model's
    page.fill("#deploy-form input[name=name]", "toy-finetuned")
    page.click("#deploy-form button[type=submit]")
    key = page.inner_text("#key-value").strip()
    ui_server.remember(key)
    wait_live(page)
    url = page.inner_text("#endpoint-url").strip()
    model_dir = page.inner_text("dd.mono").strip()
    assert model_dir.endswith("final"), model_dir
    shot(page, artifacts, "11-finetuned-endpoint")
    texts = ["query: protein and cell", "passage: protein cell gene item 0"]
    with httpx.Client(timeout=60, trust_env=False) as client:
        answer = client.post(url, json={"inputs": texts}, headers={"key": key})
    assert answer.status_code == 200, answer.text
    reference = Embedder.load(EngineSettings(model=model_dir, device="cpu")).embed(texts)
    assert_vectors(answer.json()["data"], reference)
    base_rows = Embedder.load(EngineSettings(model=str(base), device="cpu")).embed(texts)
    assert not np.allclose(base_rows, reference, atol=1e-3), "the deployed model is not the fine-tuned one"
    page.goto("/ui/jobs")
    shot(page, artifacts, "12-train-jobs")

    # a batch job embeds the dataset's passages with the fine-tuned model
    page.goto("/ui/batch-jobs")
    page.select_option("#new-batch-job select[name=dataset]", label="toy-path@1 (32 passages)")
    page.select_option("#new-batch-job select[name=model]", model_dir)
    page.click("#new-batch-job button[type=submit]")
    page.wait_for_url("**/ui/jobs/*")
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=TRAIN_TIMEOUT_MS)
    expect(page.locator("#job-steps")).to_have_text("32 / 32")
    vectors = Path(page.inner_text("#job-vectors").split()[0])
    assert (vectors / "manifest.json").is_file(), sorted(p.name for p in vectors.iterdir())
    shot(page, artifacts, "13-batch-job")
    page.goto("/ui/batch-jobs")
    shot(page, artifacts, "14-batch-jobs")


@pytest.mark.slow  # a training run to its end; tests/control/test_job_runner.py holds the same moves without a browser
def test_server_restart_interrupts_a_job_and_resume_finishes_it(browser: Any, tmp_path: Path,
                                                                artifacts: Path) -> None:
    toy = toy_dataset(tmp_path / "data")
    base = tiny_checkpoint(tmp_path / "tiny", dropout=0.0)
    server = ServerProcess(tmp_path / "server", tmp_path / "logs")
    server.start()
    watched = watched_context(browser, server.base_url)
    context = watched.__enter__()
    try:
        page = context.new_page()
        log_in(page, server)
        check_no_dataset_yet(page, "/ui/jobs", "#new-job")
        check_no_dataset_yet(page, "/ui/batch-jobs", "#new-batch-job")
        page.goto("/ui/datasets")
        page.fill("#path-dataset input[name=name]", "toy")
        page.fill("#path-dataset input[name=path]", str(toy))
        page.click("#path-dataset button[type=submit]")
        page.wait_for_url("**/ui/datasets?added=*")
        page.goto("/ui/jobs")
        page.fill("#new-job input[name=model_other]", str(base))
        page.click("#advanced-settings summary")
        for name, value in {"epochs": "60", "batch_size": "8", "train_n_passages": "4", "save_every": "10",
                            "query_max_length": "16", "passage_max_length": "32"}.items():
            page.fill(f"#new-job input[name={name}]", value)
        page.click("#new-job button[type=submit]")
        page.wait_for_url("**/ui/jobs/*")
        job_url = page.url
        expect(page.locator("#job-steps")).not_to_have_text(re.compile(r"^0 / "), timeout=TRAIN_TIMEOUT_MS)
        page.wait_for_timeout(1500)
        console_errors(page).expect_connection_refused()  # the open job page polls the stopped server
        server.stop()  # SIGTERM: the server stops its job processes, which record Interrupted
        server.start()
        log_in_again = context.new_page()
        log_in_again.goto("/ui/projects")  # the session outlived the restart: sessions live in the store
        assert log_in_again.url.endswith("/ui/projects"), log_in_again.url
        log_in_again.goto(job_url)
        expect(log_in_again.locator("#job-status")).to_have_text("Interrupted")
        assert "server shut down" in log_in_again.inner_text("#job-reason")
        step_before = int(log_in_again.inner_text("#job-steps").split("/")[0])
        assert 0 < step_before < 180
        shot(log_in_again, artifacts, "15-job-interrupted")
        log_in_again.click("#job-actions button:text('Resume')")
        expect(log_in_again.locator("#job-status")).to_have_text("Succeeded", timeout=TRAIN_TIMEOUT_MS)
        expect(log_in_again.locator("#job-steps")).to_have_text("180 / 180")
        # the page reloads when the status changes: the log appears with its next poll
        expect(log_in_again.locator("#job-log")).to_contain_text(re.compile("resum", re.I))

        # cancel (after the confirmation dialog): Cancelled, and Resume is offered
        log_in_again.goto("/ui/jobs")
        log_in_again.fill("#new-job input[name=model_other]", str(base))
        expect(log_in_again.locator("#new-job button[type=submit]")).to_be_enabled()
        log_in_again.fill("#new-job input[name=epochs]", "150")
        log_in_again.fill("#new-job input[name=batch_size]", "8")
        log_in_again.click("#new-job button[type=submit]")
        log_in_again.wait_for_url("**/ui/jobs/*")
        expect(log_in_again.locator("#job-steps")).not_to_have_text(re.compile(r"^0 / "), timeout=TRAIN_TIMEOUT_MS)
        log_in_again.once("dialog", lambda dialog: dialog.accept())
        log_in_again.click("#job-actions button:text('Cancel')")
        expect(log_in_again.locator("#job-status")).to_have_text("Cancelled")
        expect(log_in_again.locator("#job-actions button:text('Resume')")).to_be_visible()
        shot(log_in_again, artifacts, "16-job-cancelled")
    finally:
        try:
            watched.__exit__(None, None, None)  # no console error on any page of the context
        finally:
            server.stop()
