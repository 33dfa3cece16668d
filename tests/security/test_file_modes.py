"""Issue 26, point 9: what the server keeps (uploads, job folders and logs) is readable by its owner only, and a
data directory open to others is narrowed when the server starts (a real server, real files)."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import httpx

from tests.serving.server import ServerProcess

CSRF_RE = re.compile(r'name="csrf-token" content="([^"]+)"')


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_open_data_directory_is_narrowed_and_uploads_are_private(tmp_path: Path, tiny_dir: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)  # whatever the test's umask: open to others, as someone else's mkdir could leave it
    server = ServerProcess(data, tmp_path / "logs", sqlite=True, model=str(tiny_dir))
    server.start()
    try:
        assert _mode(data) == 0o700
        assert "narrowed to 700" in server.stderr()
        with httpx.Client(base_url=server.base_url, timeout=60, trust_env=False, follow_redirects=False) as http:
            assert http.post("/ui/login", data={"token": server.admin_token, "next": "/ui/"}).status_code == 303
            csrf = CSRF_RE.search(http.get("/ui/datasets").text)
            assert csrf
            files = {"passages": ("passages.jsonl", b'{"contents": "a"}\n{"contents": "b"}\n'),
                     "train": ("train.jsonl", b'{"query": "q", "positives": {"doc_id": [0]}}\n')}
            answer = http.post("/ui/datasets/upload", data={"name": "private", "description": "",
                                                             "csrf_token": csrf.group(1)}, files=files)
            assert answer.status_code == 303, answer.text
    finally:
        assert server.stop() == 0
    uploads = [p for p in data.rglob("*") if p.name in ("passages.jsonl", "train.jsonl")]
    assert len(uploads) == 2, uploads
    for path in uploads:
        assert _mode(path) == 0o600, (path, oct(_mode(path)))
        assert _mode(path.parent) == 0o700, (path.parent, oct(_mode(path.parent)))
