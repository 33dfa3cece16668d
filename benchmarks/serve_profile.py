"""Per-request CPU of the server under concurrent clients: where each request's CPU goes, by thread and by part.

Starts ``e5studio serve`` (as ``serve_load.py`` does), warms it up, then for ``--seconds`` sends single SciFact
queries from ``--clients`` keep-alive connections (``serve_load.load_test``) while
1. the CPU time of every server thread is read from ``/proc/<pid>/task/*/schedstat`` before and after (ns on
   the CPU, whatever else runs on the machine), divided by the requests answered: CPU ms per request of the
   event loop (HTTP, routing, auth, body, tokenising where it runs there, rendering, logging), of the batcher
   and engine threads (the compute), and of the rest;
2. ``py-spy`` (``pip install py-spy``) samples the server's Python threads (on-CPU samples only); each sample
   is put in one part by the innermost frame that names one (``PARTS``), and the event loop's CPU per
   request is split by those shares.

    python benchmarks/serve_profile.py --models all-minilm-l6-v2 --clients 32 --seconds 15
    python benchmarks/serve_profile.py --models all-minilm-l6-v2 --precision int8 --store postgresql://...

The CPU time per request counts in ms of one core, so it does not depend on how busy the machine is (the
latency does); what it does not show is time spent waiting (for the GIL, a lock or a core).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA  # noqa: E402
from serve_load import load_test, start_server  # noqa: E402

# (part, substrings of a py-spy frame "function (path:line)"); a sample's part is that of its innermost frame
# naming one, so that e.g. json under the access log counts as the access log.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("tokenising", ("tokenizer.py", "tokenize (", "encode_batch")),
    ("store lookup (endpoint + key)", ("sqlalchemy", "psycopg", "control/database.py", "control/endpoints.py",
                                       "directory")),
    ("key check", ("control/keys.py",)),
    ("body read + JSON + validation", ("http_body.py", "pydantic", "schemas.py")),
    ("rendering the answer", ("vectors_answer", "float64_rows", "orjson", "render")),
    ("access log + metrics", ("_note", "logging/", "prometheus_client", "edge.py:", "EndpointStats")),
    ("batcher (queue, futures, hand-back)", ("batcher.py",)),
    ("inference service", ("inference.py",)),
    ("route functions", ("routes/",)),
    ("engine compute (Python side)", ("embedder.py", "onnx_graph.py", "bert.py", "int8_kernels.py", "runtimes.py",
                                      "torch", "onnxruntime")),
    ("framework (starlette/fastapi: routing, dependencies, request/response)", ("starlette", "fastapi")),
    ("HTTP (uvicorn, httptools)", ("uvicorn", "httptools", "h11")),
    ("event loop (asyncio/uvloop, sockets; without --native also its idle waits)",
     ("uv__", "UVStream", "loop.c", "_asynciomodule", "asyncio", "uvloop", "selectors", "socket", "write (libc",
      "read (libc")),
]


def thread_cpu_ns(pid: int) -> dict[int, tuple[str, int]]:
    """tid -> (thread name, ns on the CPU so far)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        out[int(task.name)] = (name, ns)
    return out


def group(pid: int, tid: int, name: str) -> str:
    if tid == pid:
        return "event loop (main thread)"
    if name.startswith("e5studio-batch"):
        return "batcher thread (packing + runtime call)"
    if name.startswith(("python", "e5studio-work", "ThreadPool", "onnx", "pt_", "OMP", "torch")):
        # Python before 3.14 gives its threads no OS name: the batcher's is among these
        return "compute: batcher + engine intra-op threads (and the server's other Python threads)"
    return f"other ({name})"


IDLE_LEAVES = ("epoll_pwait", "epoll_wait", "pthread_cond_wait", "pthread_cond_timedwait", "sem_wait",
               "sem_timedwait", "futex", "wait_slow", "select (", "poll (", "acquire_lock_timed", "nanosleep")
IDLE = "idle (waiting: not CPU)"


def part_of(stack: list[str]) -> str:
    if stack and any(leaf in stack[-1] for leaf in IDLE_LEAVES):
        return IDLE
    for frame in reversed(stack):
        for part, needles in PARTS:
            if any(n in frame for n in needles):
                return part
    return "other"


def read_samples(raw: Path, loop_tid: int) -> tuple[Counter[str], Counter[str]]:
    """(parts of the event-loop thread's samples, parts of every other thread's samples) from py-spy's raw
    output (one collapsed stack per line: ``thread (0xTID);frame;...;frame COUNT``)."""
    loop: Counter[str] = Counter()
    rest: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack_text.split(";")
        is_loop = bool(frames) and f"{loop_tid}" in frames[0] or (frames and "MainThread" in frames[0])
        (loop if is_loop else rest)[part_of(frames[1:])] += int(count)
    return loop, rest


def profile(model: str, args: argparse.Namespace) -> dict:
    queries = ["query: " + json.loads(line)["query"] for line in (DATA / "scifact" / "queries.test.jsonl").open()]
    extra = ["--precision", args.precision] + (["--store", args.store] if args.store else [])
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, key = start_server(model, args.threads, Path(tmp), extra)
        try:
            from e5studio.engine.checkpoint import load_checkpoint
            from e5studio.engine.tokenizer import Tokenizer  # the token counts of the queries

            checkpoint = load_checkpoint(model)
            tokens = [len(ids) for ids in Tokenizer(checkpoint.path, checkpoint.max_length).encode(queries)]
            load_test(url, key, queries, tokens, args.clients, 2.0)  # warm-up
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            raw = args.raw or Path(tmp) / "profile.txt"
            sampler = None
            if Path(spy).exists() and not args.no_spy:
                sampler = subprocess.Popen(
                    [spy, "record", "--pid", str(proc.pid), "--rate", "250", "--format", "raw", "--threads",
                     *(["--native"] if args.native else ["--nonblocking"]), "--duration", str(int(args.seconds)),
                     "--output", str(raw)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                time.sleep(0.5)
            before = thread_cpu_ns(proc.pid)
            load = load_test(url, key, queries, tokens, args.clients, args.seconds)
            after = thread_cpu_ns(proc.pid)
            spy_error = ""
            if sampler is not None:
                _, err = sampler.communicate(timeout=120)
                spy_error = "" if raw.exists() else err[-500:]
            loop_parts, rest_parts = (read_samples(raw, proc.pid) if raw.exists() else (Counter(), Counter()))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    requests = max(1, int(load["requests"]) + int(load["errors"]))
    by_group: Counter[str] = Counter()
    for tid, (name, ns) in after.items():
        by_group[group(proc.pid, tid, name)] += ns - before.get(tid, (name, 0))[1]
    return {"model": model, "precision": args.precision, "threads": args.threads, "clients": args.clients,
            "store": "postgres" if args.store else "sqlite", "load": load, "requests": requests,
            "cpu_ms_per_request": {g: ns / 1e6 / requests for g, ns in by_group.items()},
            "loop_parts": dict(loop_parts), "rest_parts": dict(rest_parts), "spy_error": spy_error}


def report(r: dict) -> None:
    load = r["load"]
    print(f"\n== {r['model']} {r['precision']}, {r['clients']} clients, {r['threads']} threads, {r['store']} store: "
          f"{load['requests_s']:.1f} requests/s, p50 {load['p50_ms']:.1f} ms, {r['requests']} requests")
    cpu = r["cpu_ms_per_request"]
    print(f"CPU per request, by thread (ms of one core): total {sum(cpu.values()):.2f}")
    for g, ms in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"  {ms:7.3f}  {g}")
    loop_ms = cpu.get("event loop (main thread)", 0.0)
    for title, parts, scale in (("event loop, split by py-spy samples", r["loop_parts"], loop_ms),
                                ("other Python threads, share of their samples", r["rest_parts"], None)):
        parts = {k: v for k, v in parts.items() if k != IDLE}
        total = sum(parts.values())
        if not total:
            continue
        print(f"{title} ({total} samples):")
        for part, n in sorted(parts.items(), key=lambda kv: -kv[1]):
            ms = f"{scale * n / total:7.3f} ms" if scale is not None else "          "
            print(f"  {ms}  {n / total:6.1%}  {part}")
    if r["spy_error"]:
        print(f"py-spy: {r['spy_error']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["all-minilm-l6-v2"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--store", default="", help="a PostgreSQL URL (default: the SQLite file of a new data dir)")
    parser.add_argument("--no-spy", action="store_true", help="only the CPU per thread (no py-spy sampling)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--native", action="store_true", help="py-spy --native: C frames too (pauses the server "
                        "at each sample, so the figures are slower; for where the event loop's C time goes)")
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    args = parser.parse_args()
    print(f"CPU: {os.cpu_count()} cores; flags: {' '.join(cpu_flags())}", flush=True)
    results = []
    for model in args.models:
        result = profile(model, args)
        report(result)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def cpu_flags() -> list[str]:
    """The vector-extension flags lscpu reports (avx2, avx512*, amx*, vnni)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ["(lscpu not available)"]
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("Flags")), [])
    return sorted(f for f in flags if f.startswith(("avx", "amx")) or "vnni" in f) or ["(no AVX flags)"]


if __name__ == "__main__":
    main()
