"""Issue 26, point 4: X-Forwarded-For is trusted only from the proxies the operator names, so by default a client
cannot choose the address the login throttle counts; and every route that checks the admin token counts a wrong
one as a failed login of the client's address (the admin API, the web login, /v1/models, /ready, /metrics share
one throttle). Real servers on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving.server import ServerProcess

LIMIT = 10  # serving.throttle.LoginThrottle's default: failed logins per address and minute
WRONG = {"Authorization": "Bearer e5sadm_" + "x" * 43}


def _fail_logins(base_url: str, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as http:
        for _ in range(LIMIT + 2):
            http.post("/ui/login", data={"token": "e5sadm_wrong", "next": "/ui/"}, headers=headers)


def _login(base_url: str, token: str, headers: dict[str, str]) -> int:
    with httpx.Client(base_url=base_url, timeout=30, trust_env=False, follow_redirects=False) as http:
        return http.post("/ui/login", data={"token": token, "next": "/ui/"}, headers=headers).status_code


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[ServerProcess]:
    """A server told that loopback is its proxy: each test plays clients of its own addresses through it."""
    root = tmp_path_factory.mktemp("proxied")
    proc = ServerProcess(root / "data", root / "logs", "--forwarded-allow-ips", "127.0.0.1", model=str(tiny_dir))
    proc.start()
    yield proc
    proc.stop()


def test_by_default_a_forwarded_address_does_not_escape_the_throttle(tmp_path_factory: pytest.TempPathFactory,
                                                                     tiny_dir: Path) -> None:
    root = tmp_path_factory.mktemp("direct")
    server = ServerProcess(root / "data", root / "logs", model=str(tiny_dir))
    server.start()
    try:
        _fail_logins(server.base_url, {})
        assert _login(server.base_url, server.admin_token, {}) == 429
        assert _login(server.base_url, server.admin_token, {"X-Forwarded-For": "10.9.9.3"}) == 429
        assert "10.9.9.3" not in server.stderr()  # the access log names the real peer
    finally:
        server.stop()


def test_a_named_proxy_is_trusted_for_its_clients_addresses(behind_proxy: ServerProcess) -> None:
    _fail_logins(behind_proxy.base_url, {"X-Forwarded-For": "10.9.9.3"})
    assert _login(behind_proxy.base_url, behind_proxy.admin_token, {"X-Forwarded-For": "10.9.9.3"}) == 429
    assert _login(behind_proxy.base_url, behind_proxy.admin_token, {"X-Forwarded-For": "10.9.9.4"}) == 303


@pytest.mark.parametrize(("route", "client"), [("/v1/models", "10.8.0.1"), ("/ready", "10.8.0.2"),
                                               ("/metrics", "10.8.0.3")])
def test_wrong_tokens_on_any_route_lock_the_address_out_of_the_admin_api(behind_proxy: ServerProcess, route: str,
                                                                         client: str) -> None:
    me = {"X-Forwarded-For": client}
    admin = {"Authorization": f"Bearer {behind_proxy.admin_token}", **me}
    with httpx.Client(base_url=behind_proxy.base_url, timeout=30, trust_env=False) as http:
        assert http.get("/api/admin/projects", headers=admin).status_code == 200
        for _ in range(LIMIT + 1):
            http.get(route, headers={**WRONG, **me})
        assert http.get("/api/admin/projects", headers=admin).status_code == 429
        answer = http.get("/v1/models", headers=admin)
        assert answer.status_code == 429 and "retry-after" in answer.headers
