"""Fixtures of the web UI tests: a real ``e5studio serve`` process and Debian's Chromium driven by Playwright.

Chromium comes from Debian (``make test`` installs the ``chromium`` package; Playwright's own browser download
cannot work here). Screenshots of every page the browser tests visit are written to ``artifacts/ui/`` (or
``$E5STUDIO_ARTIFACTS/ui``), not committed.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.server import ServerProcess

CHROMIUM = os.environ.get("E5STUDIO_CHROMIUM", "/usr/bin/chromium")
# as root and without a network: no sandbox, no background connections that the closed network refuses
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``e5studio serve`` (MiniLM) on a fresh data directory, with a small upload limit for the limit test."""
    root = tmp_path_factory.mktemp("ui")
    proc = ServerProcess(root / "data", root / "logs", "--max-upload-mb", "1")
    proc.start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.stderr(), proc.stderr()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    base = Path(os.environ["E5STUDIO_ARTIFACTS"]) if os.environ.get("E5STUDIO_ARTIFACTS") else REPO / "artifacts"
    directory = base / "ui"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


@pytest.fixture(scope="module")  # Playwright's sync API keeps an event loop running in the main thread while it
def browser() -> Iterator[object]:  # is open: closed with its module, so asyncio.run in later modules works
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: `make test` installs Debian's chromium package "
                    f"(apt-get install chromium); set E5STUDIO_CHROMIUM to use another Chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


LOAD_FAILED = re.compile(r"^Failed to load resource: the server responded with a status of (\d+)")
REFUSED = "Failed to load resource: net::ERR_CONNECTION_REFUSED"


class ConsoleErrors:
    """Every console error and uncaught exception of every page of a browser context (a pattern the browser
    cannot compile, a failed load such as a missing favicon, a script error): a page of the UI has none.

    The exceptions are declared by the test: a page it expects to be answered with an error status (a form
    refused with 400, an upload over the limit with 413), which Chromium reports as a failed load, and the
    refused connections of a page polling a server the test stops."""

    def __init__(self, context: Any) -> None:
        self.seen: list[tuple[str, str]] = []  # (the resource the message is about, the message)
        self.error_documents: set[tuple[str, int]] = set()
        self.expected_statuses: set[int] = set()
        self.server_stopped = False
        context.on("console", self._console)
        context.on("weberror", lambda error: self.seen.append(("", f"uncaught: {error.error}")))
        context.on("response", self._response)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.seen.append((message.location.get("url", ""), message.text))

    def _response(self, response: Any) -> None:
        if response.request.resource_type == "document" and response.status >= 400:
            self.error_documents.add((response.url, response.status))

    def expect_error_page(self, status: int) -> None:
        """The test navigates to a page that answers ``status`` on purpose."""
        self.expected_statuses.add(status)

    def expect_connection_refused(self) -> None:
        """The test stops the server while a page polls it."""
        self.server_stopped = True

    def errors(self) -> list[str]:
        def expected(url: str, text: str) -> bool:
            if text == REFUSED:
                return self.server_stopped
            failed = LOAD_FAILED.match(text)
            return bool(failed) and int(failed.group(1)) in self.expected_statuses and (
                url, int(failed.group(1))) in self.error_documents
        return [f"{url}: {text}" for url, text in self.seen if not expected(url, text)]

    def assert_none(self) -> None:
        errors = self.errors()
        assert not errors, "console errors:\n" + "\n".join(errors)


_WATCHED: dict[int, ConsoleErrors] = {}


def console_errors(page: Any) -> ConsoleErrors:
    """The console watcher of ``page``'s browser context."""
    return _WATCHED[id(page.context)]


@contextmanager
def watched_context(browser: Any, base_url: str) -> Iterator[Any]:
    """A browser context whose pages must end without a console error (checked when it closes)."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(60_000)
    errors = _WATCHED[id(context)] = ConsoleErrors(context)
    try:
        yield context
    finally:
        context.close()
        del _WATCHED[id(context)]
    errors.assert_none()


@pytest.fixture()
def page(browser: object, ui_server: ServerProcess) -> Iterator[object]:
    with watched_context(browser, ui_server.base_url) as context:
        yield context.new_page()


@pytest.fixture()
def http(ui_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ui_server.base_url, timeout=60, trust_env=False, follow_redirects=False) as client:
        yield client
