"""Where the time of one single query goes, fp32 and int8: tokenising, the runtime (forward and pooling) and
the Python around it, against two floors measured on this machine in the same run: reading the model's
weights once (bytes / memory bandwidth of a large copy) and doing its arithmetic (FLOPs / the matmul peak).

    python benchmarks/query_profile.py --models all-minilm-l6-v2 checkpoints/e5-large-v2-shape
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from e5studio.engine.device import set_threads
from e5studio.engine.embedder import Embedder
from e5studio.settings import EngineSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, ensure_e5_shape, read_jsonl  # noqa: E402
from int8_peers import int8_matmul_peak  # noqa: E402
from throughput import matmul_peak  # noqa: E402


def p50(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1000


def bandwidth_gb_s() -> float:
    """Best GB/s read+written by copying a 512 MB tensor (the rate at which weights can stream from memory)."""
    src = torch.ones(128 * 1024 * 1024)
    dst = torch.empty_like(src)
    best = min(p50(lambda: dst.copy_(src), 1) for _ in range(5)) / 1000
    return 2 * src.numel() * 4 / best / 1e9


def profile(model: str, precision: str, queries: list[str], threads: int, gb_s: float, peak: float) -> None:
    embedder = Embedder.load(EngineSettings(model=model, threads=threads, precision=precision))
    config = embedder.checkpoint.config
    ids = embedder.tokenize(queries)
    tokens = int(np.median([len(s) for s in ids]))
    query = queries[int(np.argsort([len(s) for s in ids])[len(ids) // 2])]
    query_ids = embedder.tokenize([query])
    runtime = embedder.runtime_for(query_ids)
    for _ in range(10):
        embedder.embed([query])
    total = p50(lambda: embedder.embed([query]), 100)
    tokenize = p50(lambda: embedder.tokenize([query]), 100)
    compute = p50(lambda: runtime.rows(query_ids), 100)
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    dense_params = layers * (4 * d * d + 2 * d * f)
    weight_bytes = dense_params * (1 if precision == "int8" else 4)
    flops = 2 * tokens * dense_params
    with torch.profiler.profile() as prof:
        runtime.rows(query_ids)
    ops = sum(e.count for e in prof.key_averages() if not e.key.startswith("ProfilerStep"))
    print(f"\n== {Path(model).name} {precision} ({runtime.name}), a {tokens}-token query, {threads} threads")
    print(f"  embed([query]) p50 {total:7.2f} ms = tokenise {tokenize:.2f} + the runtime (packing, forward, pooling) "
          f"{compute:.2f} + the rest (micro-batching, Python, copies) {total - tokenize - compute:.2f}")
    print(f"  floors: reading the dense weights once {weight_bytes / 1e6:.0f} MB at {gb_s:.1f} GB/s = "
          f"{weight_bytes / gb_s / 1e6:.2f} ms; their arithmetic {flops / 1e9:.2f} G(FL)OP at the "
          f"{peak:.0f} G/s peak = {flops / peak / 1e6:.2f} ms")
    print(f"  torch operator calls in one forward: {ops} (ONNX Runtime: one session.run)" if runtime.name ==
          "onnxruntime" else f"  torch operator calls in one forward: {ops}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["all-minilm-l6-v2", "checkpoints/e5-large-v2-shape"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    set_threads(args.threads)
    ensure_e5_shape([str(Path(m).resolve()) for m in args.models])
    queries = read_jsonl(DATA / "scifact" / "queries.test.jsonl", "query", 100)
    queries = [f"query: {q}" for q in queries]
    gb_s = bandwidth_gb_s()
    fp32_peak, int8_peak = matmul_peak(torch.device("cpu"), torch.float32), int8_matmul_peak(args.threads)
    print(f"memory copy {gb_s:.1f} GB/s; fp32 matmul peak {fp32_peak:.0f} GFLOP/s; int8 {int8_peak:.0f} GOP/s")
    for model in args.models:
        for precision, peak in (("fp32", fp32_peak), ("int8", int8_peak)):
            profile(model, precision, queries, args.threads, gb_s, peak)


if __name__ == "__main__":
    main()
