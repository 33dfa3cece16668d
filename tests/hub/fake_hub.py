"""A local stand-in for the Hugging Face Hub: one model repo served over HTTP in the hub's layout.

The routes are the ones ``huggingface_hub`` calls for ``snapshot_download`` / ``hf_hub_download``:

- ``GET  /api/models/{owner}/{name}[/revision/{rev}]``: the repo's info, ``sha`` = the commit;
- ``GET  /api/models/{owner}/{name}/tree/{rev}?recursive=...``: every file with ``size``, ``oid`` (git blob SHA-1)
  and, for LFS files (weights), ``lfs: {oid: sha256, size, pointerSize}``;
- ``HEAD /{owner}/{name}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag``, ``Content-Length``
  (``X-Linked-Etag``/``X-Linked-Size`` for LFS files, as the real hub sends them);
- ``GET  /{owner}/{name}/resolve/{rev}/{path}``: the bytes, honouring ``Range: bytes=N-`` (206).

``drop_once``: the first GET of that file sends its headers and part of the body, then the connection is closed
(a dropped connection); ``stall_once``: the same, but the connection is held open until the test kills the
client. Every request is recorded (method, path, Range header).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_FILES = {"model.safetensors"}


@dataclass
class HubLog:
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Range)
    partial_sent: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class FakeHub:
    """Serves ``root`` (a folder of repo folders ``owner/name/``) on 127.0.0.1 until :meth:`close`."""

    def __init__(self, root: Path, drop_once: str | None = None, stall_once: str | None = None,
                 cut_at: int = 12_000_000) -> None:
        self.root = root
        self.log = HubLog()
        self.drop_once = drop_once
        self.stall_once = stall_once
        self.cut_at = cut_at
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                hub.handle(self, head=True)

            def do_GET(self) -> None:  # noqa: N802
                hub.handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.log.release.set()
        self.server.shutdown()
        self.server.server_close()

    # -- answers ---------------------------------------------------------------------------------

    def files(self, repo: Path) -> list[Path]:
        return sorted(p for p in repo.rglob("*") if p.is_file())

    def tree_entry(self, repo: Path, file: Path) -> dict[str, Any]:
        data = file.read_bytes()
        rel = file.relative_to(repo).as_posix()
        entry: dict[str, Any] = {"type": "file", "path": rel, "size": len(data),
                                 "oid": hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()}
        if rel in LFS_FILES:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entry["size"] = 134
            entry["oid"] = hashlib.sha1(f"lfs pointer {rel}".encode()).hexdigest()
        return entry

    def handle(self, req: BaseHTTPRequestHandler, head: bool) -> None:
        path = req.path.split("?", 1)[0]
        self.log.requests.append((req.command, path, req.headers.get("Range") or ""))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and (len(parts) == 4 or parts[4:5] in (["revision"], ["tree"])):
            repo = self.root / parts[2] / parts[3]
            if not repo.is_dir():
                return self.send(req, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            if len(parts) == 4 or parts[4] == "revision":
                body = {"id": f"{parts[2]}/{parts[3]}", "modelId": f"{parts[2]}/{parts[3]}", "sha": COMMIT,
                        "siblings": [{"rfilename": f.relative_to(repo).as_posix()} for f in self.files(repo)]}
            else:
                folders = sorted({f.relative_to(repo).parent.as_posix() for f in self.files(repo)} - {"."})
                body = [{"type": "directory", "path": d, "oid": "0" * 40} for d in folders]  # type: ignore[assignment]
                body += [self.tree_entry(repo, f) for f in self.files(repo)]  # type: ignore[operator]
            return self.send(req, 200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = self.root / parts[0] / parts[1]
            rel = "/".join(parts[4:])
            file = repo / rel
            if not file.is_file():
                return self.send(req, 404, b"Entry not found", {"X-Error-Code": "EntryNotFound",
                                                                "X-Repo-Commit": COMMIT}, head)
            data = file.read_bytes()
            entry = self.tree_entry(repo, file)
            etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
            if "lfs" in entry:
                headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
            return self.send_file(req, rel, data, headers, head)
        return self.send(req, 404, b"not found", {}, head)

    def send(self, req: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str],
             head: bool = False) -> None:
        req.send_response(status)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if not head:
            req.wfile.write(body)

    def send_file(self, req: BaseHTTPRequestHandler, rel: str, data: bytes, headers: dict[str, str],
                  head: bool) -> None:
        start = 0
        ranged = req.headers.get("Range")
        if ranged and not head:
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            req.send_response(206)
            req.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            req.send_response(200)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(data) - start))
        req.end_headers()
        if head:
            return
        if rel in (self.drop_once, self.stall_once) and start == 0 and len(data) > self.cut_at:
            stall = rel == self.stall_once
            self.drop_once = self.stall_once = None
            req.wfile.write(data[:self.cut_at])
            req.wfile.flush()
            self.log.partial_sent.set()
            if stall:
                self.log.release.wait(60)
            req.close_connection = True
            req.connection.close()
            return
        req.wfile.write(data[start:])


def write_e5_repo(root: Path, shape: Any, hub_id: str = "intfloat/e5-large-v2") -> Path:
    """A random checkpoint of ``shape`` with the file names of the real E5 repo, at ``root/hub_id``."""
    from e5studio.engine.synthetic import write_random_checkpoint

    repo = root / hub_id
    write_random_checkpoint(repo, shape, seed=3)
    (repo / "README.md").write_text("---\nlicense: mit\n---\n# e5-large-v2 (random test weights)\n")
    needed = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "vocab.txt", "modules.json", "1_Pooling/config.json"]
    missing = [n for n in needed if not (repo / n).is_file()]
    assert not missing, missing
    return repo
