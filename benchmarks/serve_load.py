"""Serving overhead and dynamic batching under load, in one run.

For each model: starts ``e5studio serve`` on loopback, then
1. single-client latency of one SciFact test query through HTTP (NLP route, a minimal client: :class:`RawHttp`)
   on one kept-alive connection, as clients with a session send, and on a new connection per query, vs
   ``Embedder.embed`` in this process on the same texts, in alternating blocks of 10 (p50/p95; what HTTP adds:
   the kept-alive p50 minus the engine's p50 in ms, target <= 1 ms; the new-connection figure is printed too);
2. throughput with 1, 8 and 32 concurrent clients, each sending single queries (requests/s, p50/p95, tokens/s
   of the answered queries), which rises with concurrency when dynamic batching works, against the engine's
   own tokens/s on the same queries in batches of as many as there are clients (in this process, the server
   idle): what the server keeps of the engine (target >= 90% at 8 and at 32 clients), the p50 at 8 clients over
   the single-client p50 (target <= 3x) and whether requests/s rise with the clients.
The CPU model and its vector flags (lscpu) are printed first: figures compare within one run and one machine.

    python benchmarks/serve_load.py                      # MiniLM + the E5-Large-V2-shaped checkpoint
    python benchmarks/serve_load.py --models all-minilm-l6-v2 --seconds 10
    python benchmarks/serve_load.py --models all-minilm-l6-v2 --precision int8
    python benchmarks/serve_load.py --models all-minilm-l6-v2 --precision both --threads 2   # issue 28's run

``--overload``: instead, 200 clients (``--overload-clients``) each sending batches of 32 passages, for
``--seconds``, against a server started with ``--server-args`` (e.g. ``--max-queue 8``). After a 429 a client
waits its ``Retry-After`` (plus up to 10% jitter), as client libraries do (openai's, urllib3's ``Retry``);
``--no-backoff`` makes them resend at once (a flood). Prints, per answer status, the latency seen by:
- a **probe**: one more client in its own process, sending the same requests one at a time (0.05 s apart) while
  the 200 load: what a client of the overloaded server waits for its 429 (the target: p50 <= 20 ms);
- the **server**: time in the app from its access log (admission happens before any tokenising);
- the **load clients**: 200 Python threads on the same cores as the server, so their figure also holds the
  load generator's own queueing for the GIL and the CPU; and how many hit the client timeout (60 s).

    python benchmarks/serve_load.py --overload --models all-minilm-l6-v2 --seconds 20
    python benchmarks/serve_load.py --overload --models all-minilm-l6-v2 --server-args="--max-queue 8"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import requests

from e5studio.engine.embedder import Embedder
from e5studio.settings import EngineSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, E5_SHAPE_DIR, ensure_e5_shape, run_models  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: str, threads: int, data_dir: Path, extra: list[str] | None = None,
                 stderr: Any = subprocess.DEVNULL) -> tuple[subprocess.Popen[str], str, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "e5studio", "serve", "--model", model, "--port", str(port), "--data-dir",
         str(data_dir), "--threads", str(threads), *(extra or [])],
        stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        return _wait_ready(proc, model)
    except BaseException:  # a start that failed must not leave the server running
        proc.kill()
        raise


def _wait_ready(proc: subprocess.Popen[str], model: str) -> tuple[subprocess.Popen[str], str, str]:
    url = key = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.search(r"URL: (\S+)", line):
            url = m.group(1)
        if m := re.search(r"key \(shown once\): (\S+)", line):
            key = m.group(1)
        if line.startswith("Serving on"):
            break
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    base = url.split("/api/")[0]
    for _ in range(600):
        try:
            if requests.get(f"{base}/ready", timeout=1).status_code == 200:
                return proc, url, key
        except (requests.ConnectionError, requests.Timeout):  # a busy machine answers /ready late: not ready yet
            pass
        time.sleep(0.5)
    sys.exit(f"server for {model} did not become ready")


LATENCY_BLOCK = 10  # single-client latency: queries per block, HTTP and in-process blocks alternating
PAUSE_S = 0.3


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(xs, p))


class RawHttp:
    """A minimal keep-alive HTTP/1.1 client for the measurements: requests pre-rendered to bytes, answers read
    by Content-Length and not parsed, so the client's own CPU per request (~0.1 ms) stays out of what is
    measured (``requests`` plus parsing 384-1,024 floats costs ~1-3 ms, on the same cores as the server)."""

    def __init__(self, url: str, key: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
        self.key = key

    def request(self, texts: list[str]) -> bytes:
        body = json.dumps({"inputs": texts}).encode()
        return (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nkey: {self.key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    async def exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
                       ) -> tuple[int, bytes]:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        return status, await reader.readexactly(length)


def load_test(url: str, key: str, queries: list[str], tokens: list[int], clients: int,
              seconds: float) -> dict[str, float]:
    """``clients`` keep-alive connections (one event loop, :class:`RawHttp`), each sending single queries one
    after the other for ``seconds``."""
    http = RawHttp(url, key)
    requests_ = [http.request([q]) for q in queries]
    latencies: list[float] = []
    counts = {"errors": 0, "tokens": 0}

    async def client(i: int, stop: float) -> None:
        reader, writer = await asyncio.open_connection(http.host, http.port)
        j = i
        try:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                status, _ = await http.exchange(reader, writer, requests_[j % len(queries)])
                if status == 200:
                    latencies.append((time.perf_counter() - t) * 1000)
                    counts["tokens"] += tokens[j % len(queries)]
                else:
                    counts["errors"] += 1
                j += clients
        finally:
            writer.close()

    async def run() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(client(i, started + seconds) for i in range(clients)))
        return time.perf_counter() - started

    elapsed = asyncio.run(run())
    return {"clients": clients, "requests_s": len(latencies) / elapsed, "p50_ms": pct(latencies, 50),
            "p95_ms": pct(latencies, 95), "errors": counts["errors"], "requests": len(latencies),
            "tokens_s": counts["tokens"] / elapsed}


def single_client_block(http: RawHttp, queries: list[str], keep_alive: bool) -> list[tuple[float, list[float]]]:
    """Each query alone, one after the other: (ms, the answer's first row) per query. ``keep_alive``: on one
    connection (opened before the clock starts), as a client with a session sends (``requests.Session``,
    ``httpx.Client``, the OpenAI SDK); else each on a new connection, opened before its clock starts (the
    server accepts it and sets up its state inside the timed part)."""
    async def block() -> list[tuple[float, bytes]]:
        out: list[tuple[float, bytes]] = []
        conn = await asyncio.open_connection(http.host, http.port) if keep_alive else None
        try:
            for query in queries:
                reader, writer = conn or await asyncio.open_connection(http.host, http.port)
                request = http.request([query])
                t = time.perf_counter()
                status, body = await http.exchange(reader, writer, request)
                out.append(((time.perf_counter() - t) * 1000, body))
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
                if conn is None:
                    writer.close()
        finally:
            if conn is not None:
                conn[1].close()
        return out

    return [(ms, json.loads(body)["data"][0]) for ms, body in asyncio.run(block())]


def engine_tokens_s(embedder: Embedder, queries: list[str], tokens: list[int], batch: int,
                    seconds: float) -> float:
    """The engine's own tokens/s on the queries in batches of ``batch`` (in this process), for ``seconds``."""
    done = j = 0
    embedder.embed(queries[:batch])
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        picked = [(j + i) % len(queries) for i in range(batch)]
        embedder.embed([queries[i] for i in picked])
        done += sum(tokens[i] for i in picked)
        j += batch
    return done / (time.perf_counter() - started)


def bench(model: str, args: argparse.Namespace, precision: str) -> dict:
    queries = [json.loads(line)["query"] for line in (DATA / "scifact" / "queries.test.jsonl").open()]
    queries = ["query: " + q for q in queries]
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, key = start_server(model, args.threads, Path(tmp), ["--precision", precision])
        try:
            embedder = Embedder.load(EngineSettings(model=model, threads=args.threads, precision=precision))
            tokens = [len(ids) for ids in embedder.tokenize(queries)]
            http = RawHttp(url, key)
            n = args.latency_queries
            for q in queries[:3]:
                embedder.embed([q])
            single_client_block(http, queries[:3], keep_alive=True)
            # alternating blocks with a pause between them: the threads of the engine that just ran (ONNX
            # Runtime's spin a while after each run) are idle before the other one starts
            http_ms, fresh_ms, local_ms, max_diff = [], [], [], 0.0
            print(f"{Path(model).name}: single-client latency, {n} queries ...", flush=True)
            for start in range(0, n, LATENCY_BLOCK):
                block = queries[start:min(start + LATENCY_BLOCK, n)]
                answered = single_client_block(http, block, keep_alive=True)
                http_ms += [ms for ms, _ in answered]
                time.sleep(PAUSE_S)
                fresh_ms += [ms for ms, _ in single_client_block(http, block, keep_alive=False)]
                time.sleep(PAUSE_S)
                for q, (_, row) in zip(block, answered, strict=True):
                    t = time.perf_counter()
                    local = embedder.embed([q])
                    local_ms.append((time.perf_counter() - t) * 1000)
                    max_diff = max(max_diff, float(np.abs(np.asarray(row) - local[0]).max()))
                time.sleep(PAUSE_S)
            print(f"  the engine's tokens/s in batches of {args.clients} ...", flush=True)
            engine = {c: engine_tokens_s(embedder, queries, tokens, c, min(args.seconds, 10.0)) for c in args.clients}
            del embedder
            loads = []
            for c in args.clients:
                print(f"  {c} concurrent clients for {args.seconds:.0f} s ...", flush=True)
                loads.append(load_test(url, key, queries, tokens, c, args.seconds))
            for row in loads:
                row["engine_tokens_s"] = engine[int(row["clients"])]
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return {"model": model, "threads": args.threads, "precision": precision, "latency_queries": n,
            "http_p50_ms": pct(http_ms, 50), "http_p95_ms": pct(http_ms, 95),
            "new_connection_p50_ms": pct(fresh_ms, 50), "new_connection_p95_ms": pct(fresh_ms, 95),
            "new_connection_adds_p50_ms": pct(fresh_ms, 50) - pct(local_ms, 50),
            "inprocess_p50_ms": pct(local_ms, 50), "inprocess_p95_ms": pct(local_ms, 95),
            "http_overhead_p50": pct(http_ms, 50) / pct(local_ms, 50) - 1,
            "http_adds_p50_ms": pct(http_ms, 50) - pct(local_ms, 50), "max_abs_diff": max_diff,
            "mean_query_tokens": sum(tokens) / len(tokens), "load": loads}


OVERHEAD_TARGET_MS = 1.0  # what HTTP may add to a single query at p50 (issue 28)
SHARE_TARGET = 0.9  # server tokens/s as a share of the engine's, at 8 and 32 clients
P50_RATIO_TARGET = 3.0  # p50 at 8 clients over the single-client p50


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(r: dict) -> None:
    print(f"\n== {r['model']} {r['precision']} ({r['threads']} torch threads in the server and in-process)")
    print(f"single client, {r['latency_queries']} queries, alternating:")
    print(f"  HTTP (NLP route)     p50 {r['http_p50_ms']:8.2f} ms  p95 {r['http_p95_ms']:8.2f} ms  (one kept-alive "
          "connection)")
    print(f"  HTTP, new connection p50 {r['new_connection_p50_ms']:8.2f} ms  p95 {r['new_connection_p95_ms']:8.2f} ms  "
          f"(one per query: {r['new_connection_adds_p50_ms']:+.2f} ms over in-process)")
    print(f"  Embedder.embed       p50 {r['inprocess_p50_ms']:8.2f} ms  p95 {r['inprocess_p95_ms']:8.2f} ms")
    print(f"  HTTP adds at p50: {r['http_adds_p50_ms']:+.2f} ms ({r['http_overhead_p50']:+.1%}; target <= "
          f"{OVERHEAD_TARGET_MS:g} ms: {verdict(r['http_adds_p50_ms'] <= OVERHEAD_TARGET_MS)})   "
          f"max |HTTP - in-process| {r['max_abs_diff']:.1e}")
    print("concurrent clients sending single queries (engine: the same queries in batches of that many, in-process):")
    for row in r["load"]:
        share = row["tokens_s"] / row["engine_tokens_s"] if row["engine_tokens_s"] else 0.0
        print(f"  {row['clients']:3d} clients: {row['requests_s']:8.1f} requests/s  p50 {row['p50_ms']:8.1f} ms  "
              f"p95 {row['p95_ms']:8.1f} ms  ({row['requests']} ok, {row['errors']} errors)  "
              f"{row['tokens_s']:8,.0f} tokens/s = {share:.0%} of the engine's {row['engine_tokens_s']:,.0f}")
    by_clients = {int(row["clients"]): row for row in r["load"]}
    for clients in (8, 32):
        row = by_clients.get(clients)
        if row and row["engine_tokens_s"]:
            share = row["tokens_s"] / row["engine_tokens_s"]
            print(f"  server / engine tokens/s at {clients} clients: {share:.0%} (target >= {SHARE_TARGET:.0%}: "
                  f"{verdict(share >= SHARE_TARGET)})")
    if 1 in by_clients and 8 in by_clients:
        ratio = by_clients[8]["p50_ms"] / by_clients[1]["p50_ms"]
        print(f"  p50 at 8 clients / p50 at 1 client: {ratio:.2f}x (target <= {P50_RATIO_TARGET:g}x: "
              f"{verdict(ratio <= P50_RATIO_TARGET)})")
        engine_8 = by_clients[8]["engine_tokens_s"]
        if engine_8 and r.get("mean_query_tokens"):
            # 8 closed-loop clients wait at least for one batch of their 8 queries at the engine's own speed
            batch_ms = 8 * r["mean_query_tokens"] / engine_8 * 1000
            print(f"    bound set by the engine alone: a batch of 8 queries takes {batch_ms:.1f} ms in-process, "
                  f"so no server gets under {batch_ms / by_clients[1]['p50_ms']:.2f}x here")
    rates = [row["requests_s"] for row in r["load"]]
    if len(rates) > 1:
        rising = all(b > a for a, b in zip(rates, rates[1:], strict=False))
        steps = " -> ".join(f"{x:.0f}" for x in rates)
        print(f"  requests/s with {' / '.join(str(int(row['clients'])) for row in r['load'])} clients: {steps} "
              f"(target: rising: {verdict(rising)})")


def cpu_flags() -> str:
    """The CPU's model and vector-extension flags (lscpu), printed with the figures."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "lscpu not available"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    vector = sorted(f for f in flags if f.startswith(("avx", "amx")) or "vnni" in f) or ["no AVX flags"]
    return f"{fields.get('Model name', '?').strip()}, {os.cpu_count()} cores, flags: {' '.join(vector)}"


CLIENT_TIMEOUT_S = 60.0


def _probe(url: str, key: str, batch: list[str], seconds: float, out: Any) -> None:
    """One more client in its own process, open loop: the same request every 0.1 s (each on its own thread, so
    an accepted one, which waits its turn in the queue, does not delay the next); (status, ms) pairs."""
    rows: list[tuple[str, float]] = []
    lock = threading.Lock()

    def one() -> None:
        t = time.perf_counter()
        try:
            status = str(requests.post(url, json={"inputs": batch}, headers={"key": key},
                                       timeout=CLIENT_TIMEOUT_S).status_code)
        except requests.RequestException as e:
            status = type(e).__name__
        with lock:
            rows.append((status, (time.perf_counter() - t) * 1000))

    threads = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        threads.append(threading.Thread(target=one, daemon=True))
        threads[-1].start()
        time.sleep(0.1)
    for thread in threads:
        thread.join()
    out.put(rows)


def _server_times(log: Path) -> dict[str, list[float]]:
    """Time in the app per status, from the server's JSON access-log lines."""
    times: dict[str, list[float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"route": "/api/' in line and "{" in line:  # the inference routes (not the start's /ready polls)
            try:
                record = json.loads(line[line.index("{"):])
            except ValueError:
                continue
            times.setdefault(str(record.get("status")), []).append(float(record.get("ms", 0.0)))
    return times


def _summary(by_status: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"count": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99)} for k, v in sorted(by_status.items())}


class _Load:
    """``clients`` threads posting ``batches`` to ``url`` until ``stop``; latency per outcome."""

    def __init__(self, url: str, key: str, batches: list[list[str]], clients: int, stop: float,
                 backoff: bool) -> None:
        self.by_status: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._args = (url, key, batches, clients, stop, backoff)
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, i: int) -> None:
        url, key, batches, clients, stop, backoff = self._args
        session = requests.Session()
        j = i
        while time.perf_counter() < stop:
            t = time.perf_counter()
            wait = 0.0
            try:
                r = session.post(url, json={"inputs": batches[j % len(batches)]}, headers={"key": key},
                                 timeout=CLIENT_TIMEOUT_S)
                outcome = str(r.status_code)
                if r.status_code == 429 and backoff:
                    wait = float(r.headers.get("Retry-After", "1")) * random.uniform(1.0, 1.1)
            except requests.Timeout:
                outcome = "timeout"
            except requests.ConnectionError:
                outcome = "connection error"
            with self._lock:
                self.by_status.setdefault(outcome, []).append((time.perf_counter() - t) * 1000)
            j += clients
            time.sleep(min(wait, max(0.0, stop - time.perf_counter())))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join()


# A stand-in server that answers every request with a 429 at once, from the bytes it has read so far (uvloop-free
# asyncio, no framework): what the load clients alone can reach on this machine.
_STUB = """
import asyncio, sys
ANSWER = (b"HTTP/1.1 429 Too Many Requests\\r\\ncontent-type: application/json\\r\\nretry-after: 1\\r\\n"
          b"content-length: 2\\r\\n\\r\\n{}")
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\\r\\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            writer.write(ANSWER)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def generator_ceiling(batches: list[list[str]], clients: int, seconds: float) -> dict[str, dict[str, float]]:
    """The same load clients (no backoff) against ``_STUB``: the 429 rate and latency the load generator itself
    reaches on this machine, whatever the server."""
    port = free_port()
    stub = subprocess.Popen([sys.executable, "-c", _STUB, str(port)])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        load = _Load(f"http://127.0.0.1:{port}/x", "", batches, clients, time.perf_counter() + seconds, False)
        started = time.perf_counter()
        load.start()
        load.join()
        elapsed = time.perf_counter() - started
    finally:
        stub.terminate()
        stub.wait(timeout=30)
    summary = _summary(load.by_status)
    for row in summary.values():
        row["per_s"] = row["count"] / elapsed
    return summary


def overload(model: str, args: argparse.Namespace) -> dict:
    """``--overload-clients`` clients sending 32 passages per request (see the module's docstring)."""
    passages = [json.loads(line)["contents"] for line in (DATA / "scifact" / "passages.jsonl").open()][:2000]
    batches = [["passage: " + p for p in passages[i:i + 32]] for i in range(0, len(passages), 32)]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with log.open("w") as server_err:
            proc, url, key = start_server(model, args.threads, Path(tmp) / "data", args.server_args.split(),
                                          stderr=server_err)
        load = _Load(url, key, batches, args.overload_clients, time.perf_counter() + args.seconds, args.backoff)
        probe_out: Any = multiprocessing.get_context("spawn").Queue()
        # the probe starts once the load has filled the queue (the first quarter of the run)
        probe = multiprocessing.get_context("spawn").Process(
            target=_probe, args=(url, key, batches[-1], args.seconds * 0.7, probe_out), daemon=True)
        try:
            started = time.perf_counter()
            load.start()
            time.sleep(args.seconds * 0.25)
            probe.start()
            probe_rows = probe_out.get(timeout=args.seconds + CLIENT_TIMEOUT_S + 60)
            probe.join()
            load.join()
            elapsed = time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait(timeout=120)
        probe_by_status: dict[str, list[float]] = {}
        for status, ms in probe_rows:
            probe_by_status.setdefault(status, []).append(ms)
        server = _server_times(log)
    ceiling = {} if args.backoff else generator_ceiling(batches, args.overload_clients, min(args.seconds, 15.0))
    return {"model": model, "clients": args.overload_clients, "seconds": elapsed, "server_args": args.server_args,
            "backoff": args.backoff, "probe": _summary(probe_by_status), "server": _summary(server),
            "outcomes": _summary(load.by_status), "generator_ceiling": ceiling}


def report_overload(r: dict) -> None:
    mode = "waiting Retry-After after a 429" if r["backoff"] else "resending at once after a 429 (no backoff)"
    print(f"\n== {r['model']}: {r['clients']} clients x 32 passages for {r['seconds']:.0f} s, {mode} "
          f"(server args: {r['server_args'] or 'defaults'})")
    for title, key in (("probe client (own process)", "probe"), ("server (time in the app)", "server"),
                       ("load clients (same cores)", "outcomes")):
        print(f"  {title}:")
        for outcome, row in r[key].items():
            print(f"    {outcome:>16}: {row['count']:6d} answers  p50 {row['p50_ms']:9.1f} ms  "
                  f"p99 {row['p99_ms']:9.1f} ms")
    stub = r.get("generator_ceiling", {}).get("429")
    if stub:
        print(f"  the same load clients against a stub that answers 429 at once: {stub['per_s']:.0f} answers/s, "
              f"p50 {stub['p50_ms']:.1f} ms, p99 {stub['p99_ms']:.1f} ms (what the load generator itself reaches "
              "here: without backoff, N clients wait about N / rate each)")
    probe_429 = r["probe"].get("429")
    if probe_429:
        verdict = "met" if probe_429["p50_ms"] <= 20 else "NOT met"
        print(f"  429 p50 seen by the probe: {probe_429['p50_ms']:.1f} ms (target <= 20 ms: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["all-minilm-l6-v2", str(E5_SHAPE_DIR)])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each load level")
    parser.add_argument("--precision", choices=("fp32", "int8", "both"), default="fp32",
                        help="the server's and the in-process engine's precision (both: fp32, then int8)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--overload", action="store_true", help="the 429 test (see above) instead")
    parser.add_argument("--overload-clients", type=int, default=200)
    parser.add_argument("--no-backoff", dest="backoff", action="store_false",
                        help="--overload clients resend at once after a 429 instead of waiting its Retry-After")
    parser.add_argument("--server-args", default="", help="extra `e5studio serve` flags, e.g. '--max-queue 8'")
    args = parser.parse_args()
    print(f"CPU: {cpu_flags()}", flush=True)
    ensure_e5_shape(args.models)
    if args.overload:
        run_models(args.models, lambda model: overload(model, args), report_overload, args.json)
    else:
        results = []
        for precision in ("fp32", "int8") if args.precision == "both" else (args.precision,):
            for model in args.models:
                results.append(bench(model, args, precision))
                report(results[-1])
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
