"""Fixtures of the web UI tests: a real ``e5studio serve`` process and Debian's Chromium driven by Playwright.

Chromium comes from Debian (``make test`` installs the ``chromium`` package; Playwright's own browser download
cannot work here). Screenshots of every page the browser tests visit are written to ``artifacts/ui/`` (or
``$E5STUDIO_ARTIFACTS/ui``), not committed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture()
def page(browser: object, ui_server: ServerProcess) -> Iterator[object]:
    context = browser.new_context(base_url=ui_server.base_url, viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    context.set_default_timeout(60_000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture()
def http(ui_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ui_server.base_url, timeout=60, trust_env=False, follow_redirects=False) as client:
        yield client
