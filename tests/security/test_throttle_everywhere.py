"""Issue 26, point 4: every route that checks the admin token counts a wrong one as a failed login of the
client's address (the admin API, the web login, /v1/models, /ready, /metrics share one throttle)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.serving.server import ServerProcess

LIMIT = 10  # serving.throttle's default: failed logins per address and minute


@pytest.mark.parametrize("route", ["/v1/models", "/ready", "/metrics"])
def test_wrong_tokens_on_any_route_lock_the_address_out_of_the_admin_api(tmp_path: Path, route: str) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "logs", sqlite=True)
    server.start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=30, trust_env=False) as http:
            for _ in range(LIMIT + 1):
                http.get(route, headers={"Authorization": "Bearer e5sadm_" + "x" * 43})
            admin = {"Authorization": f"Bearer {server.admin_token}"}
            assert http.get("/api/admin/projects", headers=admin).status_code == 429
            answer = http.get("/v1/models", headers=admin)
            assert answer.status_code == 429 and "retry-after" in answer.headers
    finally:
        server.stop()
