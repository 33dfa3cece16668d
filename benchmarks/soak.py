"""Memory soak: server RSS under mixed load, printed every ``--every`` seconds.

Starts ``e5studio serve`` (``--server-args`` passed on), then ``--clients`` clients send requests of 1-32
SciFact passages cut to random lengths (so batch shapes keep changing) for ``--minutes``. Prints the
server's RSS (from /proc) at each sample and, at the end, RSS at minute 1, the last sample, and the growth
between the middle and the end. The target (issue 13): after 10 minutes within +20% of minute 1, no growth
between minutes 5 and 10.

    python benchmarks/soak.py --model all-minilm-l6-v2 --minutes 10
    python benchmarks/soak.py --minutes 2 --every 10               # a short run
    MALLOC_ARENA_MAX=8 python benchmarks/soak.py ...               # an operator's own allocator settings
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA  # noqa: E402
from serve_load import start_server  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between RSS samples")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--server-args", default="", help="extra `e5studio serve` flags")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    passages = [json.loads(line)["contents"] for line in (DATA / "scifact" / "passages.jsonl").open()][:5000]
    counts = {"ok": 0, "429": 0, "other": 0}
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, key = start_server(args.model, args.threads, Path(tmp), args.server_args.split())
        stop = time.monotonic() + args.minutes * 60

        def client(i: int) -> None:
            rng = random.Random(args.seed * 1000 + i)
            session = requests.Session()
            while time.monotonic() < stop:
                texts = ["passage: " + p[: rng.randint(10, 2000)] for p in rng.sample(passages, rng.randint(1, 32))]
                try:
                    answer = session.post(url, json={"inputs": texts}, headers={"key": key}, timeout=120)
                    outcome = {200: "ok", 429: "429"}.get(answer.status_code, "other")
                except requests.RequestException:
                    outcome, answer = "other", None
                with lock:
                    counts[outcome] += 1
                if answer is not None and answer.status_code == 429:  # shed: wait as the server asks
                    time.sleep(float(answer.headers.get("retry-after", "1")))

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
        started = time.monotonic()
        samples: list[tuple[float, float]] = [(0.0, rss_mb(proc.pid))]
        print(f"t=   0 s  RSS {samples[0][1]:7.1f} MB  (idle, model loaded)", flush=True)
        for t in threads:
            t.start()
        try:
            while time.monotonic() < stop:
                time.sleep(min(args.every, max(0.0, stop - time.monotonic())))
                at = time.monotonic() - started
                samples.append((at, rss_mb(proc.pid)))
                with lock:
                    done = dict(counts)
                print(f"t={at:4.0f} s  RSS {samples[-1][1]:7.1f} MB  requests ok {done['ok']}, 429 {done['429']}, "
                      f"other {done['other']}", flush=True)
            for t in threads:
                t.join(150)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    first_minute = min(samples[1:], key=lambda s: abs(s[0] - 60))
    middle = min(samples[1:], key=lambda s: abs(s[0] - samples[-1][0] / 2))
    last = samples[-1]
    print(f"\nRSS at {first_minute[0]:.0f} s: {first_minute[1]:.1f} MB; at {last[0]:.0f} s: {last[1]:.1f} MB "
          f"({last[1] / first_minute[1] - 1:+.1%}); from {middle[0]:.0f} s to the end: {last[1] - middle[1]:+.1f} MB")
    second_half = [(t, rss) for t, rss in samples if t >= middle[0]]
    if len(second_half) >= 3:  # a trend, not two noisy points: least-squares slope and the spread around it
        ts = [t / 60 for t, _ in second_half]
        ys = [rss for _, rss in second_half]
        mean_t, mean_y = sum(ts) / len(ts), sum(ys) / len(ys)
        covariance = sum((t - mean_t) * (y - mean_y) for t, y in zip(ts, ys, strict=True))
        slope = covariance / sum((t - mean_t) ** 2 for t in ts)
        print(f"second half: {len(ys)} samples {min(ys):.1f}-{max(ys):.1f} MB, least-squares slope "
              f"{slope:+.1f} MB/min")


if __name__ == "__main__":
    main()
