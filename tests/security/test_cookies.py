"""Issue 26, point 9: the session cookie is Secure when the operator says the server runs behind TLS, and the
logout cookie carries the same attributes as the session cookie it ends (a real server on loopback)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from e5studio.settings import ServeSettings
from tests.serving.server import ServerProcess

CSRF_RE = re.compile(r'name="csrf-token" content="([^"]+)"')


def _login_and_out(server: ServerProcess) -> tuple[str, str]:
    """The Set-Cookie headers of a login and of the logout that follows."""
    with httpx.Client(base_url=server.base_url, timeout=60, trust_env=False, follow_redirects=False) as http:
        login = http.post("/ui/login", data={"token": server.admin_token, "next": "/ui/"})
        assert login.status_code == 303
        # httpx keeps a Secure cookie for https only: carry it by hand over this plain-HTTP test connection
        session = re.match(r"e5studio_session=([^;]+)", login.headers["set-cookie"])
        assert session
        http.cookies.set("e5studio_session", session.group(1), path="/ui")
        csrf = CSRF_RE.search(http.get("/ui/projects").text)
        assert csrf
        logout = http.post("/ui/logout", data={"csrf_token": csrf.group(1)})
        assert logout.status_code == 303
        return login.headers["set-cookie"], logout.headers["set-cookie"]


def test_an_https_public_url_means_secure_cookies_unless_told_otherwise() -> None:
    assert not ServeSettings().secure_cookies
    assert not ServeSettings(public_url="http://e5.example.org").secure_cookies
    assert ServeSettings(public_url="https://e5.example.org").secure_cookies
    assert ServeSettings(public_url="HTTPS://e5.example.org").secure_cookies
    assert not ServeSettings(public_url="https://e5.example.org", cookie_secure=False).secure_cookies
    assert ServeSettings(cookie_secure=True).secure_cookies


@pytest.mark.parametrize(("flags", "secure"), [((), False), (("--cookie-secure",), True)])
def test_cookie_attributes(tmp_path: Path, tiny_dir: Path, flags: tuple[str, ...], secure: bool) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "logs", *flags, sqlite=True, model=str(tiny_dir))
    server.start()
    try:
        login, logout = _login_and_out(server)
    finally:
        server.stop()
    for header in (login, logout):
        attributes = {part.strip().split("=")[0].lower(): part for part in header.split(";")}
        assert "httponly" in attributes and attributes["samesite"].strip().lower() == "samesite=strict", header
        assert ("secure" in attributes) is secure, header
