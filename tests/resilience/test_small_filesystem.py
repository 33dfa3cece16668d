"""Issue 25, point 5 on a real small file system: the SQLite store in a 2 MiB tmpfs (in a private mount namespace:
nothing is mounted for the rest of the machine) filled up (ENOSPC): writes fail with StoreUnavailableError naming
the file, reads keep working, writes work again once there is space on the same open store, SQLite's integrity
check passes and every acknowledged write is there. Then the data directory becomes read-only (a read-only bind
mount): opening the store, as a server or a CLI command does, fails with a clear error naming the file (the CLI:
exit 75, no traceback). Needs ``unshare -m`` and ``mount`` (root, or a user namespace); the RLIMIT_FSIZE test
(``test_full_disk.py``) covers a full disk for any user."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from e5studio.cli import EXIT_RETRYABLE
from tests.serving.server import cli_env

SCRIPT = r"""
import json, os, sqlite3, subprocess, sys
from e5studio.control.store import Store
from e5studio.errors import StoreUnavailableError
from e5studio.settings import StoreTimeouts

root = sys.argv[1]
path = os.path.join(root, "data", "e5studio.db")
store = Store.open(path, timeouts=StoreTimeouts(statement_s=2.0))
filler = os.path.join(root, "filler")
with open(filler, "wb", buffering=0) as f:  # fill the file system, then leave a few pages free
    try:
        while True:
            f.write(b"\0" * 4096)
    except OSError:
        pass
os.truncate(filler, max(0, os.path.getsize(filler) - 48 * 1024))
acked, full = [], ""
for i in range(2000):
    try:
        store.create_project(f"p{i}", "x" * 1500)
        acked.append(f"p{i}")
    except StoreUnavailableError as exc:
        full = str(exc)
        break
reads_when_full = sorted(p.name for p in store.list_projects())
os.remove(filler)
store.create_project("after-space", "")
acked.append("after-space")
store.close()
data = os.path.join(root, "data")  # the data directory becomes read-only (a bind mount of itself, read-only)
subprocess.run(["mount", "--bind", data, data], check=True)
subprocess.run(["mount", "-o", "remount,bind,ro", data], check=True)
try:
    Store.open(path).close()
    readonly = ""
except StoreUnavailableError as exc:
    readonly = str(exc)
cli = subprocess.run([sys.executable, "-m", "e5studio", "admin-token", "--data-dir", data], capture_output=True,
                     text=True)
subprocess.run(["umount", data], check=True)
with sqlite3.connect(path) as conn:
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    stored = sorted(row[0] for row in conn.execute("SELECT name FROM projects"))
print(json.dumps({"path": path, "acked": acked, "full": full, "reads_when_full": reads_when_full,
                  "readonly": readonly, "cli": [cli.returncode, cli.stderr], "integrity": integrity, "stored": stored}))
"""


def test_a_full_then_read_only_file_system_refuses_writes_keeps_reads_and_loses_nothing(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed: test_full_disk.py covers a full disk")
    mount = tmp_path / "fs"
    mount.mkdir()
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here ({probe.stderr.strip()}): test_full_disk.py covers a full disk")
    shell = (f"mount -t tmpfs -o size=2m tmpfs {mount} && exec {sys.executable} -c \"$SCRIPT\" {mount}")
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", shell], capture_output=True,
                            text=True, timeout=300, env=cli_env(SCRIPT=SCRIPT))
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["path"] in found["full"] and "disk is full" in found["full"], found["full"]
    assert len(found["acked"]) > 2
    assert set(found["acked"][:-2]) <= set(found["reads_when_full"])  # reads work on the full file system
    # a read-only data directory: opening the store (a server's start, a CLI command) says so, naming the file
    assert found["path"] in found["readonly"] and "Read-only file system" in found["readonly"], found["readonly"]
    code, stderr = found["cli"]
    assert code == EXIT_RETRYABLE and found["path"] in stderr and "Traceback" not in stderr, stderr
    assert found["integrity"] == "ok"
    assert set(found["acked"]) <= set(found["stored"])
