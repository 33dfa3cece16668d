"""A real ``e5studio serve`` process on loopback, and the real CLI pointed at it.

The process writes stdout and stderr to files (no pipe can fill up and stall it); the banner it prints at
first start (admin token, default endpoint URL, key, curl line) is parsed from the stdout file. Every key or
token the tests learn (banner, CLI output, admin API answers) is collected in ``secrets`` so that the logs and
the database can be searched for them afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests import stores

MINILM = "all-minilm-l6-v2"
ATOL = 1e-5  # HTTP answers vs Embedder.embed in-process
SECRET_RE = re.compile(r"e5s(?:adm)?_[A-Za-z0-9_-]{20,}")
ADMIN_RE = re.compile(r"^Admin token .*: (e5sadm_\S+)$", re.M)
URL_RE = re.compile(r"^  URL: (http://\S+)$", re.M)
KEY_RE = re.compile(r"^  key \(shown once\): (e5s_\S+)$", re.M)
CURL_RE = re.compile(r"^  try: (curl .+)$", re.M)
SERVING_LINE = "Serving on "
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env(**extra: str) -> dict[str, str]:
    """The caller's environment without E5STUDIO_* settings, offline, on CPU, no proxy for loopback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("E5STUDIO_")}
    env.update(HF_HUB_OFFLINE="1", E5STUDIO_DEVICE="cpu", NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", **extra)
    return env


def json_prefix(text: str) -> Any:
    """The JSON value at the start of ``text`` (the CLI prints JSON, sometimes followed by a hint)."""
    value, _ = json.JSONDecoder().raw_decode(text.lstrip())
    return value


@dataclass(frozen=True)
class Banner:
    """What ``e5studio serve`` printed at first start."""

    admin_token: str
    url: str
    key: str
    curl: str

    @property
    def project_id(self) -> str:
        return self.url.rstrip("/").split("/")[-2]

    @property
    def endpoint_id(self) -> str:
        return self.url.rstrip("/").split("/")[-1]


class ServerProcess:
    """``python -m e5studio serve`` on 127.0.0.1; start/stop may be repeated on the same data directory."""

    def __init__(self, data_dir: Path, log_dir: Path, *extra_args: str, model: str = MINILM,
                 sqlite: bool = False) -> None:
        """``sqlite``: the store is the data directory's SQLite file also on PostgreSQL runs (tests of the file
        itself); else the test run's store (:mod:`tests.stores`)."""
        self.data_dir = data_dir
        # None: the data directory's SQLite file (serve's default); else a PostgreSQL URL passed with --store
        self.store_url = None if sqlite or not stores.on_postgres() else stores.store_for(data_dir)
        self.log_dir = log_dir
        self.extra_args = extra_args
        self.model = model
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.secrets: set[str] = set()
        self.runs = 0
        self.returncodes: list[int] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._admin_token: str | None = None

    # -- process ---------------------------------------------------------------------------------

    def stdout_path(self, run: int | None = None) -> Path:
        return self.log_dir / f"run{run or self.runs}.stdout"

    def stderr_path(self, run: int | None = None) -> Path:
        return self.log_dir / f"run{run or self.runs}.stderr"

    def stdout(self, run: int | None = None) -> str:
        return self.stdout_path(run).read_text(encoding="utf-8", errors="replace")

    def stderr(self, run: int | None = None) -> str:
        return self.stderr_path(run).read_text(encoding="utf-8", errors="replace")

    def start(self) -> None:
        assert self._proc is None, "already running"
        self.runs += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "e5studio", "serve", "--model", self.model, "--data-dir", str(self.data_dir),
               "--host", "127.0.0.1", "--port", str(self.port), *self.extra_args,
               *(["--store", self.store_url] if self.store_url else [])]
        with self.stdout_path().open("wb") as out, self.stderr_path().open("wb") as err:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=cli_env())
        self._wait_ready()
        banner = self.stdout()
        self.secrets.update(SECRET_RE.findall(banner))
        token = ADMIN_RE.search(banner)
        if token:
            self._admin_token = token.group(1)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = "no answer"
        with httpx.Client(timeout=5, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise AssertionError(f"e5studio serve exited with {self._proc.returncode} before it was "
                                         f"ready:\n{self.stdout()}\n{self.stderr()}")
                try:
                    answer = client.get(f"{self.base_url}/ready")
                    last = f"{answer.status_code} {answer.text}"
                    if answer.status_code == 200 and SERVING_LINE in self.stdout():
                        return
                except httpx.TransportError as exc:
                    last = repr(exc)
                time.sleep(0.2)
        self._proc.kill()
        raise AssertionError(f"e5studio serve not ready after {READY_TIMEOUT_S}s ({last}):\n{self.stderr()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send ``sig`` (SIGTERM: what a process manager sends; SIGINT: Ctrl+C), wait for the exit, return its
        status."""
        assert self._proc is not None, "not running"
        proc, self._proc = self._proc, None
        proc.send_signal(sig)
        try:
            code = proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"e5studio serve did not exit {STOP_TIMEOUT_S}s after {sig.name}") from None
        self.returncodes.append(code)
        return code

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def banner(self, run: int = 1) -> Banner:
        """The first-start banner (run 1 unless told)."""
        text = self.stdout(run)
        found = [r.search(text) for r in (ADMIN_RE, URL_RE, KEY_RE, CURL_RE)]
        assert all(found), f"banner incomplete:\n{text}"
        admin, url, key, curl = (m.group(1) for m in found if m)
        return Banner(admin_token=admin, url=url, key=key, curl=curl)

    def stdout_after_banner(self, run: int) -> str:
        """Everything the run printed after its start-up lines (which end with 'Serving on ...')."""
        text = self.stdout(run)
        _, sep, rest = text.partition(SERVING_LINE)
        assert sep, text
        return rest.partition("\n")[2]

    def data_bytes(self) -> dict[str, bytes]:
        """Every file under the data directory (the SQLite database, its WAL and shm files); on a PostgreSQL
        store, also every row of the store as text, under the name ``e5studio.db (PostgreSQL: every row)``."""
        files = {str(p.relative_to(self.data_dir)): p.read_bytes() for p in sorted(self.data_dir.rglob("*"))
                 if p.is_file()}
        if self.store_url:
            files["e5studio.db (PostgreSQL: every row)"] = stores.dump(self.store_url)
        return files

    # -- clients ---------------------------------------------------------------------------------

    @property
    def admin_token(self) -> str:
        assert self._admin_token, "no admin token seen yet"
        return self._admin_token

    def remember(self, text: str) -> str:
        """Collect every key or token in ``text``; return ``text``."""
        self.secrets.update(SECRET_RE.findall(text))
        return text

    def cli(self, *args: str, token: str | None = "default") -> subprocess.CompletedProcess[str]:
        """The real CLI (``python -m e5studio ...``) against this server, with E5STUDIO_ADMIN_TOKEN set."""
        store = {"E5STUDIO_STORE": self.store_url} if self.store_url else {}
        env = cli_env(**store) if token is None else cli_env(
            E5STUDIO_ADMIN_TOKEN=self.admin_token if token == "default" else token, **store)
        argv = [*args, "--server", self.base_url]
        result = subprocess.run([sys.executable, "-m", "e5studio", *argv], capture_output=True, text=True, env=env,
                                timeout=120, stdin=subprocess.DEVNULL)
        self.remember(result.stdout)
        self.remember(result.stderr)
        return result

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """One admin API call with the admin token (keys in the answer are remembered)."""
        with httpx.Client(base_url=self.base_url, timeout=60, trust_env=False) as client:
            answer = client.request(method, path, json=body,
                                    headers={"Authorization": f"Bearer {self.admin_token}"})
        self.remember(answer.text)
        return answer

    def create_endpoint(self, project: str, name: str, batch_size: int = 32,
                        model: str = MINILM) -> tuple[dict[str, Any], str]:
        """Create (project if needed and) endpoint through the admin API; (endpoint view, key)."""
        if project not in {p["name"] for p in self.admin("GET", "/api/admin/projects").json()["projects"]}:
            created = self.admin("POST", "/api/admin/projects", {"name": project})
            assert created.status_code == 201, created.text
        answer = self.admin("POST", "/api/admin/endpoints",
                            {"project": project, "name": name, "model": model, "batch_size": batch_size})
        assert answer.status_code == 201, answer.text
        body = answer.json()
        return body["endpoint"], body["key"]

    def wait_status(self, project: str, endpoint: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll the endpoint until it is no longer Deploying; its admin view."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.admin("GET", f"/api/admin/projects/{project}/endpoints/{endpoint}").json()
            if view["status"] != "Deploying" or time.monotonic() > deadline:
                return view
            time.sleep(0.1)


def assert_no_secrets(where: str, text: str | bytes, secrets: set[str]) -> None:
    data = text.encode("utf-8") if isinstance(text, str) else text
    leaked = sorted(s[:8] + "..." for s in secrets if s.encode("ascii") in data)
    assert not leaked, f"keys/tokens in clear in {where}: {leaked}"


def assert_vectors(got: Any, expected: np.ndarray) -> None:
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def assert_error(answer: httpx.Response, status: int, *parts: str) -> str:
    """An error answer: the status, a JSON body ``{"error": {"message": ...}}`` and the message parts."""
    assert answer.status_code == status, (answer.status_code, answer.text)
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    body = answer.json()
    assert set(body) == {"error"}, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message.strip(), body
    for part in parts:
        assert part in message, (part, message)
    return message
