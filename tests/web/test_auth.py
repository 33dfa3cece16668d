"""The UI's guard rails over plain HTTP: login, session cookie, CSRF, logout, no open redirect."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.serving.server import ServerProcess

CSRF_RE = re.compile(r'name="csrf-token" content="([^"]+)"')


def login(http: httpx.Client, token: str, next_url: str = "/ui/") -> str:
    """Log in; returns the CSRF token of the new session (read from a page, as the browser would)."""
    answer = http.post("/ui/login", data={"token": token, "next": next_url})
    assert answer.status_code == 303, answer.text
    cookie = answer.headers["set-cookie"]
    assert "e5studio_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie, cookie
    page = http.get("/ui/projects")
    assert page.status_code == 200
    match = CSRF_RE.search(page.text)
    assert match and match.group(1), page.text[:500]
    return match.group(1)


def test_pages_without_session_redirect_to_login(http: httpx.Client) -> None:
    for path in ("/ui/", "/ui/projects", "/ui/datasets", "/ui/jobs", "/ui/batch-jobs", "/ui/endpoints/new?project=x"):
        answer = http.get(path)
        assert answer.status_code == 303, (path, answer.status_code)
        location = answer.headers["location"]
        assert location.startswith("/ui/login?next="), location
        assert httpx.URL(location).params["next"] == path
    assert http.get("/ui").headers["location"] == "/ui/"
    # the UI's JSON calls answer 401 instead of a redirect
    answer = http.get("/ui/api/endpoints")
    assert answer.status_code == 401 and "log in" in answer.json()["error"]["message"]
    # forms without a session are refused too
    assert http.post("/ui/projects", data={"name": "x", "csrf_token": "y"}).status_code in (303, 401)


def test_a_form_post_without_session_is_an_html_401_page(http: httpx.Client) -> None:
    """The one error handler: status from the one table, shown as a page of the UI."""
    answer = http.post("/ui/projects", data={"name": "x", "csrf_token": "y"})
    assert answer.status_code == 401, answer.text
    assert "text/html" in answer.headers["content-type"]
    assert "log in first" in answer.text
    assert http.get("/ui/api/endpoints").json() == {
        "error": {"message": "log in first: no valid session", "type": "authentication_error", "code": 401}}


def test_wrong_token_is_refused(http: httpx.Client) -> None:
    answer = http.post("/ui/login", data={"token": "e5sadm_not-the-token", "next": "/ui/"})
    assert answer.status_code == 401
    assert "not valid" in answer.text
    assert "set-cookie" not in answer.headers


def test_form_post_without_csrf_token_is_refused(http: httpx.Client, ui_server: ServerProcess) -> None:
    csrf = login(http, ui_server.admin_token)
    for data in ({"name": "no-csrf"}, {"name": "bad-csrf", "csrf_token": "forged"}):
        answer = http.post("/ui/projects", data=data)
        assert answer.status_code == 403, answer.text
        assert "CSRF token is missing or wrong" in answer.text
        assert "text/html" in answer.headers["content-type"]
    listing = http.get("/ui/projects").text
    assert "no-csrf" not in listing and "bad-csrf" not in listing
    # the JSON call of the try-it box needs the header
    endpoint_id = re.search(r'data-endpoint-id="([0-9a-f]+)"', http.get("/ui/projects/default").text)
    assert endpoint_id
    answer = http.post(f"/ui/api/endpoints/{endpoint_id.group(1)}/try", json={"texts": ["query: hi"]})
    assert answer.status_code == 403
    answer = http.post(f"/ui/api/endpoints/{endpoint_id.group(1)}/try", json={"texts": ["query: hi"]},
                       headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 200, answer.text
    assert answer.json()["dimension"] == 384
    # with the token, the same form works
    answer = http.post("/ui/projects", data={"name": "with-csrf", "csrf_token": csrf})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/projects/with-csrf"


def test_logout_ends_the_session(http: httpx.Client, ui_server: ServerProcess) -> None:
    csrf = login(http, ui_server.admin_token)
    assert http.post("/ui/logout", data={}).status_code == 403  # logout is a form too
    answer = http.post("/ui/logout", data={"csrf_token": csrf})
    assert answer.status_code == 303
    assert http.get("/ui/projects").status_code == 303
    old = http.cookies.get("e5studio_session")
    assert old is None  # the cookie was deleted


def test_login_never_redirects_off_site(http: httpx.Client, ui_server: ServerProcess) -> None:
    for target in ("https://evil.example/", "//evil.example/ui/", "/api/admin/projects"):
        answer = http.post("/ui/login", data={"token": ui_server.admin_token, "next": target})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/ui/"


def test_new_endpoint_offers_aliases_and_local_checkpoints(http: httpx.Client, ui_server: ServerProcess,
                                                          minilm_dir: Path) -> None:
    models = ui_server.data_dir / "models"
    models.mkdir(exist_ok=True)
    (models / "my-minilm").symlink_to(minilm_dir, target_is_directory=True)
    (models / "not-a-checkpoint").mkdir()
    login(http, ui_server.admin_token)
    form = http.get("/ui/endpoints/new?project=default").text
    for alias in ("e5-large-v2", "e5-base-v2", "e5-small-v2", "all-minilm-l6-v2"):
        assert f'<option value="{alias}"' in form
    assert f'value="{(models / "my-minilm").resolve()}"' in form
    assert "not-a-checkpoint" not in form
    assert "vectorising a knowledge base" in form and "one query at a time" in form
