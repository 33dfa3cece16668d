"""Issue 26, point 4: X-Forwarded-For is trusted only from the proxies the operator names; by default a client
cannot choose the address the login throttle counts (a real server on loopback)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.serving.server import ServerProcess

LIMIT = 10  # serving.throttle.LoginThrottle's default: failed logins per address and minute


def _fail_logins(base_url: str, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as http:
        for _ in range(LIMIT + 2):
            http.post("/ui/login", data={"token": "e5sadm_wrong", "next": "/ui/"}, headers=headers)


def _login(base_url: str, token: str, headers: dict[str, str]) -> int:
    with httpx.Client(base_url=base_url, timeout=30, trust_env=False, follow_redirects=False) as http:
        return http.post("/ui/login", data={"token": token, "next": "/ui/"}, headers=headers).status_code


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("forwarded")
    proc = ServerProcess(root / "data", root / "logs", *request.param)
    proc.start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("server", [()], indirect=True)
def test_by_default_a_forwarded_address_does_not_escape_the_throttle(server: ServerProcess) -> None:
    _fail_logins(server.base_url, {})
    assert _login(server.base_url, server.admin_token, {}) == 429
    assert _login(server.base_url, server.admin_token, {"X-Forwarded-For": "10.9.9.3"}) == 429
    assert "10.9.9.3" not in server.stderr()  # the access log names the real peer


@pytest.mark.parametrize("server", [("--forwarded-allow-ips", "127.0.0.1")], indirect=True)
def test_a_named_proxy_is_trusted_for_its_clients_addresses(server: ServerProcess) -> None:
    _fail_logins(server.base_url, {"X-Forwarded-For": "10.9.9.3"})
    assert _login(server.base_url, server.admin_token, {"X-Forwarded-For": "10.9.9.3"}) == 429
    assert _login(server.base_url, server.admin_token, {"X-Forwarded-For": "10.9.9.4"}) == 303
