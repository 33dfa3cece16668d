"""What a newcomer sees when ``e5studio serve`` starts (issue 27, point 1): the web UI's address, the admin token
and the endpoint's URL, key and curl line in one block, not buried under the store's migration log; a restart
prints the address again and no secret."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.serving.server import ServerProcess


def test_first_start_prints_one_block_with_the_web_ui_and_no_migration_chatter(tmp_path: Path, tiny_dir: Path) -> None:
    # the tiny random model: the banner's lines do not depend on the model, which loads in a blink
    server = ServerProcess(tmp_path / "data", tmp_path / "logs", sqlite=True, model=str(tiny_dir))
    server.start()
    try:
        banner = server.banner()  # admin token, URL, key and curl line, each found on its own line
        stdout, stderr = server.stdout(), server.stderr()
    finally:
        assert server.stop(signal.SIGTERM) == 0
    lines = stdout.splitlines()
    ui = f"Web UI: {server.base_url}/ui/"
    assert any(line.startswith(ui) for line in lines), stdout
    block = stdout[stdout.index(ui):stdout.index("Serving on ")]
    for secret in (banner.admin_token, banner.url, banner.key):
        assert secret in block, stdout  # together, between the UI address and the 'Serving on' line
    assert "Running upgrade" not in stderr and "alembic" not in stderr.lower(), stderr

    server.start()  # a restart on the same data directory
    try:
        second = server.stdout(2)
    finally:
        assert server.stop() == 0
    assert f"Web UI: {server.base_url}/ui/" in second and "Serving on " in second, second
    assert "Admin token" not in second and "key (shown once)" not in second, second
