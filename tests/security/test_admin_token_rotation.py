"""Issue 26, point 1: rotating the admin token ends every web session (a real server, the real CLI)."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx

from tests.serving.server import ServerProcess, cli_env

CSRF_RE = re.compile(r'name="csrf-token" content="([^"]+)"')
TOKEN_RE = re.compile(r"(e5sadm_\S+)")


def _session(server: ServerProcess, token: str) -> tuple[httpx.Client, str]:
    http = httpx.Client(base_url=server.base_url, timeout=60, trust_env=False, follow_redirects=False)
    assert http.post("/ui/login", data={"token": token, "next": "/ui/"}).status_code == 303
    page = http.get("/ui/projects")
    assert page.status_code == 200
    csrf = CSRF_RE.search(page.text)
    assert csrf
    return http, csrf.group(1)


def test_rotating_the_admin_token_ends_every_session(server: ServerProcess) -> None:
    first, first_csrf = _session(server, server.admin_token)
    second, _ = _session(server, server.admin_token)
    store = ["--store", server.store_url] if server.store_url else ["--data-dir", str(server.data_dir)]
    rotated = subprocess.run([sys.executable, "-m", "e5studio", "admin-token", *store], capture_output=True,
                             text=True, env=cli_env(), timeout=120, stdin=subprocess.DEVNULL)
    assert rotated.returncode == 0, rotated.stderr
    found = TOKEN_RE.search(rotated.stdout)
    assert found, rotated.stdout
    new_token = found.group(1)
    for http in (first, second):
        page = http.get("/ui/projects")
        assert page.status_code == 303 and page.headers["location"].startswith("/ui/login"), page.status_code
        assert http.get("/ui/api/endpoints").status_code == 401
    # a state-changing call with the old cookie and its CSRF token is refused too
    refused = first.post("/ui/projects", data={"name": "after-rotation", "csrf_token": first_csrf})
    assert refused.status_code == 401, refused.status_code
    # the old token no longer logs in; the new one does
    assert first.post("/ui/login", data={"token": server.admin_token, "next": "/ui/"}).status_code == 401
    fresh, _ = _session(server, new_token)
    projects = fresh.get("/ui/projects")
    assert projects.status_code == 200 and "after-rotation" not in projects.text  # the refused form changed nothing
    for http in (first, second, fresh):
        http.close()
