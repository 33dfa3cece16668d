"""Slow bodies on real sockets (issue 25, point 6): STALLED connections each send the headers and half the body of
an inference request (with a valid key, so the request passes authentication and waits for its body) and then
stall, while CLIENTS normal clients keep sending inference requests to the same ``e5studio serve`` process.

Prints, measured in the same run on the same server:
- the normal clients' p50/p95 latency unloaded and while the stalled connections are open, and the ratio
  (target: p50 within 2x of unloaded);
- how many stalled connections got HTTP 408, and when (target: every one, within its deadline: --body-timeout
  plus the grace the declared length earns);
- the server's open file descriptors and resident memory before, during and after (target: back to the baseline).

    python benchmarks/slow_bodies.py                 # 500 stalled, 8 clients, MiniLM, --body-timeout 5
    python benchmarks/slow_bodies.py --stalled 100 --model /path/to/checkpoint

The machine's CPU flags (lscpu) are printed with the figures; the peer here is the same server unloaded.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ADMIN_RE = re.compile(r"Admin token[^:]*: (\S+)")
URL_RE = re.compile(r"URL: (\S+)")
KEY_RE = re.compile(r"key \(shown once\): (\S+)")
SERVING = "Serving on "
DECLARED = 1000  # the stalled requests declare this many body bytes and send half


@dataclass
class Figures:
    stalled: int
    clients: int
    body_timeout_s: float
    unloaded_ms: list[float] = field(default_factory=list)
    loaded_ms: list[float] = field(default_factory=list)
    client_errors: list[str] = field(default_factory=list)
    answers_408: int = 0
    other_answers: list[str] = field(default_factory=list)
    unanswered: int = 0
    latest_408_s: float = 0.0  # the longest a stalled connection waited for its 408
    waits_408: list[tuple[int, float]] = field(default_factory=list)  # (order opened, seconds to its 408)
    fds: dict[str, int] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)

    @property
    def deadline_s(self) -> float:
        return self.body_timeout_s + DECLARED / (64 * 1024)

    def p(self, values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else float("nan")

    def by_order(self) -> str:
        waits = [w for _, w in sorted(self.waits_408)]
        if not waits:
            return "none"
        tenth = max(1, len(waits) // 10)
        return " ".join(f"{statistics.median(waits[i:i + tenth]):.2f}" for i in range(0, len(waits), tenth))

    @property
    def ratio(self) -> float:
        return statistics.median(self.loaded_ms) / statistics.median(self.unloaded_ms)

    def lines(self) -> list[str]:
        return [
            f"normal clients ({self.clients}): unloaded p50 {statistics.median(self.unloaded_ms):.1f} ms "
            f"p95 {self.p(self.unloaded_ms, 95):.1f} ms ({len(self.unloaded_ms)} requests); with {self.stalled} "
            f"stalled bodies p50 {statistics.median(self.loaded_ms):.1f} ms p95 {self.p(self.loaded_ms, 95):.1f} ms "
            f"({len(self.loaded_ms)} requests); p50 ratio {self.ratio:.2f}x (target <= 2x); client errors "
            f"{len(self.client_errors)}",
            f"stalled connections: {self.answers_408}/{self.stalled} got 408, the last after {self.latest_408_s:.2f} "
            f"s (deadline {self.deadline_s:.2f} s); other answers {len(self.other_answers)}; unanswered "
            f"{self.unanswered}",
            f"  seconds to the 408 by the order the connections were opened: {self.by_order()}",
            f"server fds: {self.fds}; resident memory MB: {self.rss_mb}",
        ]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _clients(base_url: str, path: str, key: str, count: int, seconds: float, figures: Figures,
             into: list[float]) -> None:
    """``count`` clients sending one small inference request after another for ``seconds``."""
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as http:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    answer = http.post(path, json={"inputs": ["a short query about proteins"]}, headers={"key": key})
                    outcome = None if answer.status_code == 200 else f"HTTP {answer.status_code}"
                except httpx.HTTPError as exc:
                    outcome = repr(exc)
                took = (time.perf_counter() - started) * 1000
                with lock:
                    if outcome is None:
                        into.append(took)
                    else:
                        figures.client_errors.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _open_stalled(port: int, path: str, key: str, count: int) -> list[tuple[socket.socket, float]]:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nkey: {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {DECLARED}\r\n\r\n").encode()
    half = b'{"inputs": ["' + b"x" * (DECLARED // 2 - 13)
    opened = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(head + half)
        opened.append((sock, time.monotonic()))
    return opened


def _collect(opened: list[tuple[socket.socket, float]], figures: Figures, wait_s: float, pid: int) -> None:
    """Read each stalled connection's answer (its status line) until ``wait_s`` after the last was opened; the
    server's most file descriptors meanwhile."""
    order = {sock.fileno(): i for i, (sock, _) in enumerate(opened)}
    pending = {sock.fileno(): (sock, at, b"") for sock, at in opened}
    stop_at = max(at for _, at in opened) + wait_s
    figures.fds["most while stalled"] = 0
    while pending and time.monotonic() < stop_at:
        figures.fds["most while stalled"] = max(figures.fds["most while stalled"], fd_count(pid))
        ready, _, _ = select.select(list(pending), [], [], 0.2)
        for fd in ready:
            sock, at, got = pending[fd]
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            got += data
            if b"\r\n" in got or not data:
                del pending[fd]
                status = got.split(b"\r\n", 1)[0].decode(errors="replace")
                if status.startswith("HTTP/1.1 408"):
                    figures.answers_408 += 1
                    figures.latest_408_s = max(figures.latest_408_s, time.monotonic() - at)
                    figures.waits_408.append((order[fd], time.monotonic() - at))
                else:
                    figures.other_answers.append(status or "closed without an answer")
            else:
                pending[fd] = (sock, at, got)
    figures.unanswered = len(pending)
    for sock, _ in opened:
        sock.close()


def measure(base_url: str, pid: int, path: str, key: str, *, stalled: int, clients: int, body_timeout_s: float,
            unloaded_s: float = 5.0, settle_s: float = 10.0) -> Figures:
    """The run against a server that is up (``pid`` its process, ``path`` an inference route, ``key`` its key)."""
    figures = Figures(stalled=stalled, clients=clients, body_timeout_s=body_timeout_s)
    _clients(base_url, path, key, clients, 1.0, figures, [])  # warm
    figures.fds["before"], figures.rss_mb["before"] = fd_count(pid), round(rss_mb(pid), 1)
    _clients(base_url, path, key, clients, unloaded_s, figures, figures.unloaded_ms)
    opened = _open_stalled(urlsplit(base_url).port or 80, path, key, stalled)
    loaded = threading.Thread(target=_clients, args=(base_url, path, key, clients,
                                                     max(1.0, figures.deadline_s - 0.5), figures, figures.loaded_ms))
    loaded.start()
    _collect(opened, figures, figures.deadline_s + 5.0, pid)
    loaded.join()
    deadline = time.monotonic() + settle_s  # the server closes its side; give it a moment
    while time.monotonic() < deadline and fd_count(pid) > figures.fds["before"]:
        time.sleep(0.2)
    figures.fds["after"], figures.rss_mb["after"] = fd_count(pid), round(rss_mb(pid), 1)
    return figures


# ---------------------------------------------------------------------------------------------- a server


@contextmanager
def server(model: str, body_timeout_s: float, threads: int) -> Iterator[tuple[subprocess.Popen[bytes], str, str, str]]:
    """``e5studio serve`` on a fresh data directory: (process, base URL, inference path, key)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = Path(tempfile.mkdtemp(prefix="e5-slow-bodies-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("E5STUDIO_")}
    env.update(HF_HUB_OFFLINE="1", E5STUDIO_DEVICE="cpu", NO_PROXY="127.0.0.1")
    out = (root / "stdout").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "e5studio", "serve", "--model", model, "--data-dir",
                             str(root / "data"), "--port", str(port), "--threads", str(threads), "--body-timeout",
                             str(body_timeout_s)], stdout=out, stderr=(root / "stderr").open("wb"),
                            stdin=subprocess.DEVNULL, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            text = (root / "stdout").read_text(errors="replace")
            if SERVING in text:
                try:
                    if httpx.get(base_url + "/ready", timeout=5, trust_env=False).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{(root / 'stderr').read_text(errors='replace')}")
            time.sleep(0.2)
        url, key = URL_RE.search(text), KEY_RE.search(text)
        assert url and key, text
        yield proc, base_url, urlsplit(url.group(1)).path, key.group(1)
    finally:
        proc.terminate()
        proc.wait(60)
        out.close()


def cpu_flags() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "lscpu not available"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("Flags")), [])
    shown = [f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c")]
    return f"{model}; {os.cpu_count()} CPUs; {' '.join(shown)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stalled", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--body-timeout", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--unloaded-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_flags()}", flush=True)
    with server(args.model, args.body_timeout, args.threads) as (proc, base_url, path, key):
        figures = measure(base_url, proc.pid, path, key, stalled=args.stalled, clients=args.clients,
                          body_timeout_s=args.body_timeout, unloaded_s=args.unloaded_seconds)
    for line in figures.lines():
        print(line)
    ok = (figures.answers_408 == args.stalled and figures.latest_408_s <= figures.deadline_s + 1.0
          and figures.ratio <= 2.0 and figures.fds["after"] <= figures.fds["before"] and not figures.client_errors)
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
