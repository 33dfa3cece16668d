"""Issue 25, point 5: the SQLite store on a full disk. A real ``e5studio serve`` on its SQLite file gets a file-size
limit (RLIMIT_FSIZE, set on the running process: every write past it fails with EFBIG, which SQLite reports as
"database or disk is full", exactly as ENOSPC) a little above what its store holds: writes answer 503 with
Retry-After naming the file, reads (the admin API's lists, inference's key check) keep working, the CLI writing the
store says what and where with the retryable exit status, and once space is back writes work again without a
restart; the file passes SQLite's integrity check and holds every write that was acknowledged."""

from __future__ import annotations

import resource
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from e5studio.cli import EXIT_RETRYABLE
from tests.serving.server import ServerProcess, cli_env

ATTEMPTS = 3000


def _full(message: str) -> bool:
    """SQLite says "database or disk is full" where a write meets ENOSPC, "disk I/O error" where it meets EFBIG
    in the WAL: either is named."""
    return "cannot be written" in message and ("disk is full" in message or "disk I/O error" in message)


def limit_files(pid: int, size: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))


def test_a_full_disk_refuses_writes_with_503_keeps_reads_and_loses_nothing(tmp_path: Path, tiny_dir: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, tmp_path / "logs", "--threads", "1", model=str(tiny_dir), sqlite=True)
    server.start()
    try:
        banner = server.banner()
        database = data / "e5studio.db"
        # every file may grow to a little above the largest store file now: the store fills up within a few writes
        sizes = [p.stat().st_size for p in data.glob("e5studio.db*")]
        assert server._proc is not None  # noqa: SLF001
        limit_files(server._proc.pid, max(sizes) + 16 * 1024)  # noqa: SLF001
        acknowledged: list[str] = []
        refused = None
        for i in range(ATTEMPTS):
            answer = server.admin("POST", "/api/admin/projects", {"name": f"p{i}", "description": "x" * 2000})
            assert answer.status_code in (201, 503), answer.text  # never a 500
            if answer.status_code == 503:
                refused = answer
                break
            acknowledged.append(f"p{i}")
        assert refused is not None, f"{ATTEMPTS} writes fit under the limit"
        message = refused.json()["error"]["message"]
        assert str(database) in message and _full(message), message
        assert int(refused.headers["Retry-After"]) >= 1

        listed = server.admin("GET", "/api/admin/projects")  # reads keep working
        assert listed.status_code == 200, listed.text
        assert set(acknowledged) <= {p["name"] for p in listed.json()["projects"]}
        with httpx.Client(base_url=server.base_url, timeout=60, trust_env=False) as client:
            inference = client.post(urlsplit(banner.url).path, json={"inputs": ["hello"]},
                                    headers={"key": banner.key})
        assert inference.status_code == 200, inference.text  # the key check reads the store

        # the CLI writing the same full store (admin-token rotates the token in the file)
        def full_limit() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max(sizes) + 16 * 1024, resource.RLIM_INFINITY))

        rotated = subprocess.run([sys.executable, "-m", "e5studio", "admin-token", "--data-dir", str(data)],
                                 capture_output=True, text=True, env=cli_env(), timeout=120, preexec_fn=full_limit)
        assert rotated.returncode == EXIT_RETRYABLE, (rotated.returncode, rotated.stdout, rotated.stderr)
        assert str(database) in rotated.stderr and _full(rotated.stderr), rotated.stderr
        assert "Traceback" not in rotated.stderr

        limit_files(server._proc.pid, resource.RLIM_INFINITY)  # noqa: SLF001 - space is back
        again = server.admin("POST", "/api/admin/projects", {"name": "after", "description": ""})
        assert again.status_code == 201, again.text
        acknowledged.append("after")
        assert server.admin("GET", "/api/admin/projects").status_code == 200
    finally:
        code = server.stop()
    assert code == 0, server.stderr()
    assert "Traceback" not in server.stderr(), server.stderr()
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in conn.execute("SELECT name FROM projects")}
    assert set(acknowledged) <= stored, sorted(set(acknowledged) - stored)
