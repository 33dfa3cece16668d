"""The knowledge-base pages in a real Chromium against a real ``e5studio serve``: create a knowledge base from
the form (a knowledge-base job of the server's runner; the page links it and shows its progress), see it in the
list, search it from its page and get the hits the CLI's search gives; the job's page says it succeeded."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from e5studio.control.store import Store
from e5studio.jobs.kb import ops
from e5studio.settings import EngineSettings
from tests.kb.conftest import long_documents, write_jsonl
from tests.serving.server import ServerProcess
from tests.web.test_browser import log_in, shot


def test_create_from_the_form_then_search_from_the_page(page: Any, ui_server: ServerProcess, artifacts: Path,
                                                       tmp_path: Path) -> None:
    docs = write_jsonl(tmp_path / "docs.jsonl", long_documents(12, seed=9))
    log_in(page, ui_server)
    page.goto("/ui/kb")
    shot(page, artifacts, "kb-01-list-empty")
    page.fill("#create-kb input[name=name]", "papers")
    page.fill("#create-kb input[name=data]", str(docs))
    page.fill("#create-kb input[name=id_field]", "id")
    page.fill("#create-kb input[name=chunk_tokens]", "64")
    page.click("#create-kb button[type=submit]")
    page.wait_for_url("**/ui/kb/*/*")
    kb_url = page.url
    expect(page.locator("#kb-job")).to_contain_text("(create)")
    job_url = page.locator("#kb-job a").get_attribute("href")
    assert job_url and job_url.startswith("/ui/jobs/")
    shot(page, artifacts, "kb-02-building")
    deadline = time.monotonic() + 180
    while "no complete version yet" in page.inner_text("#current-version") and time.monotonic() < deadline \
            and "Failed" not in page.inner_text("#versions"):
        time.sleep(1)
        page.reload()
    expect(page.locator("#current-version")).to_contain_text("12 documents")
    shot(page, artifacts, "kb-03-ready")
    page.goto(job_url)
    expect(page.locator("h1")).to_contain_text("Knowledge-base job")
    expect(page.locator("#job-status")).to_have_text("Succeeded")
    expect(page.locator("#job-steps")).to_have_text("12 / 12")
    page.goto(kb_url)

    query = "protein kinase receptor"
    page.fill("#kb-search input[name=q]", query)
    page.check("#kb-search input[name=by_document]")
    page.click("#kb-search button[type=submit]")
    rows = page.locator("#hits tbody tr")
    expect(rows).to_have_count(10)
    shot(page, artifacts, "kb-04-search")
    shown = [rows.nth(i).locator("td").nth(2).inner_text() for i in range(10)]
    with Store(ui_server.store_url or ui_server.data_dir / "e5studio.db") as store:
        cli = ops.search(store, "default", "papers", query, 10, None, True,
                         EngineSettings(model="unused", device="cpu", threads=1))
    assert shown == [h.doc_id for h in cli]

    page.goto("/ui/kb")
    expect(page.locator("#kbs tr[data-kb=papers]")).to_contain_text("embedded")
    page.fill("#create-kb input[name=name]", "bad name!")
    page.fill("#create-kb input[name=data]", str(docs))
    from tests.web.conftest import console_errors

    console_errors(page).expect_error_page(400)
    page.click("#create-kb button[type=submit]")
    expect(page.locator("#kb-error")).to_contain_text("invalid knowledge base name")
