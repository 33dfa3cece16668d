"""Throughput and latency: e5studio vs sentence-transformers on the same checkpoint, in one run.

For each model: the same SciFact passages embedded by both engines, alternating rounds (best round counts
for each), then single SciFact test queries one at a time, alternating per query (p50/p95). Prints items/s,
real tokens/s (tokens the model computes on, [CLS]/[SEP] included, no padding), the ratio
e5studio / sentence-transformers, the max cosine deviation between the two engines' vectors, and the
fraction of this machine's fp32 matrix-multiply peak that the model's FLOPs at each engine's throughput
represent. The peak is measured here: the faster of one large torch.mm on all threads and (CPU) one large
torch.mm per thread at once, each on one thread (how e5studio runs the micro-batches of a large input), at
the start and again after each model's throughput rounds (the best measurement counts: on a shared machine
a single one can be far too low).

    python benchmarks/throughput.py                                 # MiniLM + E5-Large shape (CPU)
    python benchmarks/throughput.py --models all-minilm-l6-v2 --device cuda --dtype float16

sentence-transformers runs ``encode(batch_size=32, normalize_embeddings=True)``; both engines get the same
torch thread count (e5studio: spread over its per-core workers) and the same truncation length.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from e5studio.engine.checkpoint import BertConfig
from e5studio.engine.device import set_threads
from e5studio.engine.embedder import Embedder
from e5studio.settings import EngineSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, E5_SHAPE_DIR, ensure_e5_shape, read_jsonl, run_models  # noqa: E402


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Best GFLOP/s of a large square matmul: the machine's practical peak for this dtype."""
    n = 4096 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(4 if device.type == "cpu" else 20):
        sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def matmul_peak_per_core(threads: int) -> float:
    """GFLOP/s of ``threads`` large square matmuls at once on the CPU, one per thread, each on one torch thread."""
    n, rounds = 2048, 4
    barrier = threading.Barrier(threads)
    times: list[float] = []

    def work() -> None:
        torch.get_num_threads()  # this thread's own count from here on
        torch.set_num_threads(1)
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        barrier.wait()
        t = time.perf_counter()
        for _ in range(rounds):
            torch.mm(a, b)
        times.append(time.perf_counter() - t)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    set_threads(threads)  # the workers' set_num_threads also changed torch's default for new threads
    return threads * rounds * 2 * n**3 / max(times) / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_flops(config: BertConfig, lengths: np.ndarray) -> float:
    """Forward FLOPs of the encoder on these sequence lengths (matmuls only, no padding)."""
    d, f = config.hidden_size, config.intermediate_size
    dense = 2 * lengths * (4 * d * d + 2 * d * f)  # QKV + attention output + feed-forward
    attention = 4 * lengths.astype(np.float64) ** 2 * d  # QK^T and AV
    return float(config.num_hidden_layers * (dense + attention).sum())


def timed(fn, device: torch.device) -> tuple[float, np.ndarray]:  # type: ignore[no-untyped-def]
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def machine_peak(device: torch.device, threads: int) -> float:
    """The best of :func:`matmul_peak` and (CPU, several threads) :func:`matmul_peak_per_core`."""
    peak = matmul_peak(device, torch.float32 if device.type == "cpu" else torch.float16)
    if device.type == "cpu" and threads > 1:
        peak = max(peak, matmul_peak_per_core(threads))
    return peak


def bench_model(model: str, args: argparse.Namespace, peaks: list[float]) -> dict:
    from sentence_transformers import SentenceTransformer

    settings = EngineSettings(model=model, device=args.device, dtype=args.dtype, threads=args.threads,
                              max_batch_tokens=args.max_batch_tokens)
    ours = Embedder.load(settings)
    device = torch.device(ours.device)
    st = SentenceTransformer(str(ours.checkpoint.path), device=str(device))
    st.to(ours.encoder.word_embeddings.weight.dtype)  # same precision as ours (fp16/bf16 on CUDA)
    if st.max_seq_length != ours.max_length:
        sys.exit(f"truncation differs: sentence-transformers {st.max_seq_length}, e5studio {ours.max_length}")
    set_threads(args.threads)

    is_large = ours.checkpoint.config.num_hidden_layers >= 24 and device.type == "cpu"
    n_passages = args.large_passages if is_large else args.passages
    n_queries = args.large_queries if is_large else args.queries
    passages = read_jsonl(DATA / "scifact" / "passages.jsonl", "contents", n_passages)
    queries = read_jsonl(DATA / "scifact" / "queries.test.jsonl", "query", n_queries)
    lengths = np.array(ours.tokenizer.count_tokens(passages))
    tokens = int(lengths.sum())
    flops = model_flops(ours.checkpoint.config, lengths)

    def run_ours() -> np.ndarray:
        return ours.embed(passages)

    def run_st() -> np.ndarray:
        return st.encode(passages, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)

    run_ours() if not is_large else ours.embed(passages[:8])  # warm-up
    run_st() if not is_large else st.encode(passages[:8], batch_size=32, normalize_embeddings=True)
    t_ours, t_st = [], []
    v_ours = v_st = np.zeros(0)
    for _ in range(args.rounds):
        dt, v_ours = timed(run_ours, device)
        t_ours.append(dt)
        dt, v_st = timed(run_st, device)
        t_st.append(dt)
        peaks.append(machine_peak(device, args.threads))  # this shared machine's speed drifts: sample it often
    peak = max(peaks)
    cos = (v_ours.astype(np.float64) * v_st).sum(1) / (
        np.linalg.norm(v_ours, axis=1) * np.linalg.norm(v_st, axis=1))
    best_ours, best_st = min(t_ours), min(t_st)

    def query_ours(q: str) -> np.ndarray:
        return ours.embed([q])

    def query_st(q: str) -> np.ndarray:
        return st.encode([q], normalize_embeddings=True, convert_to_numpy=True)

    # Back to back, in alternating blocks: each engine's threads stay awake between its queries, and the other
    # engine's threads have gone quiet (spinning worker threads of one engine would slow the other's).
    lat_ours, lat_st, q_cos = [], [], []
    for q in queries[:3]:
        query_ours(q)
        query_st(q)
    for start in range(0, len(queries), args.latency_block):
        block = queries[start:start + args.latency_block]
        rows = []
        for q in block:
            dt, a = timed(lambda q=q: query_ours(q), device)
            lat_ours.append(dt * 1000)
            rows.append(a)
        for q, a_row in zip(block, rows, strict=True):
            dt, b = timed(lambda q=q: query_st(q), device)
            lat_st.append(dt * 1000)
            q_cos.append(float((a_row[0] * b[0]).sum() / np.linalg.norm(a_row[0]) / np.linalg.norm(b[0])))
    # After an idle pause before every query (sporadic traffic: both engines' threads have gone to sleep).
    idle_ours, idle_st = [], []
    for q in queries[:args.idle_queries]:
        time.sleep(args.idle_ms / 1000)
        idle_ours.append(timed(lambda q=q: query_ours(q), device)[0] * 1000)
        time.sleep(args.idle_ms / 1000)
        idle_st.append(timed(lambda q=q: query_st(q), device)[0] * 1000)

    def pct(xs: list[float], p: float) -> float:
        return float(np.percentile(xs, p))

    result = {
        "model": model, "device": str(device), "dtype": str(ours.encoder.word_embeddings.weight.dtype),
        "threads": args.threads, "e5studio_scheduler": scheduler_name(ours),
        "e5studio_runtime": ours.runtime, "passages": n_passages,
        "tokens": tokens, "queries": n_queries, "max_length": ours.max_length,
        "e5studio_items_s": n_passages / best_ours, "st_items_s": n_passages / best_st,
        "e5studio_tokens_s": tokens / best_ours, "st_tokens_s": tokens / best_st,
        "throughput_ratio": best_st / best_ours,
        "e5studio_rounds_s": t_ours, "st_rounds_s": t_st,
        "passage_min_cosine": float(cos.min()), "query_min_cosine": min(q_cos),
        "e5studio_gflops": flops / best_ours / 1e9, "st_gflops": flops / best_st / 1e9,
        "peak_gflops": peak, "e5studio_peak_fraction": flops / best_ours / 1e9 / peak,
        "st_peak_fraction": flops / best_st / 1e9 / peak,
        "e5studio_p50_ms": pct(lat_ours, 50), "e5studio_p95_ms": pct(lat_ours, 95),
        "st_p50_ms": pct(lat_st, 50), "st_p95_ms": pct(lat_st, 95),
        "latency_ratio_p50": pct(lat_ours, 50) / pct(lat_st, 50),
        "latency_median_pair_ratio": statistics.median(a / b for a, b in zip(lat_ours, lat_st, strict=True)),
        "idle_ms": args.idle_ms, "idle_queries": len(idle_ours),
        "e5studio_idle_p50_ms": pct(idle_ours, 50), "st_idle_p50_ms": pct(idle_st, 50),
        "idle_latency_ratio_p50": pct(idle_ours, 50) / pct(idle_st, 50),
        "tokenize_p50_ms": pct([timed(lambda q=q: ours.tokenize([q]), device)[0] * 1000 for q in queries], 50),
    }
    if device.type == "cpu" and not args.no_int8:
        result.update(bench_int8(settings, ours, passages, queries, flops, tokens, best_st, v_ours, args))
    return result


def bench_int8(settings: EngineSettings, ours: Embedder, passages: list[str], queries: list[str], flops: float,
               tokens: int, best_st: float, v_fp32: np.ndarray, args: argparse.Namespace) -> dict:
    """e5studio int8 against sentence-transformers fp32 (``best_st``, same run) and ONNX Runtime's own dynamic
    int8 model; the cosine gate against e5studio fp32; single-query latency; the int8 matmul peak."""
    from dataclasses import replace

    from int8_peers import OrtDynamicInt8, int8_matmul_peak

    int8 = Embedder.load(replace(settings, precision="int8"))
    peer = OrtDynamicInt8(ours.encoder, lambda texts: ours.tokenize(texts), args.threads)
    device = torch.device("cpu")
    int8.embed(passages[:8])
    peer.encode(passages[:8])
    t_int8, t_peer, peaks8 = [], [], []
    v_int8 = v_peer = np.zeros(0)
    for _ in range(args.rounds):
        dt, v_int8 = timed(lambda: int8.embed(passages), device)
        t_int8.append(dt)
        dt, v_peer = timed(lambda: peer.encode(passages), device)
        t_peer.append(dt)
        peaks8.append(int8_matmul_peak(args.threads))
    p_cos = (v_int8 * v_fp32).sum(1)
    peer_cos = (v_peer * v_fp32).sum(1)
    q_int8 = np.concatenate([int8.embed([q]) for q in queries])
    q_cos = (q_int8 * ours.embed(queries)).sum(1)
    for q in queries[:3]:
        int8.embed([q])
    lat = [timed(lambda q=q: int8.embed([q]), device)[0] * 1000 for q in queries]
    query_tokens = [len(s) for s in ours.tokenize(queries)]
    best8, best_peer, peak8 = min(t_int8), min(t_peer), max(peaks8)
    return {
        "int8_items_s": len(passages) / best8, "int8_tokens_s": tokens / best8,
        "int8_vs_st_fp32": best_st / best8, "ort_int8_tokens_s": tokens / best_peer,
        "int8_vs_ort_int8": best_peer / best8, "ort_int8_vs_st_fp32": best_st / best_peer,
        "int8_rounds_s": t_int8, "ort_int8_rounds_s": t_peer,
        "int8_peak_gops": peak8, "int8_gops": flops / best8 / 1e9, "int8_peak_fraction": flops / best8 / 1e9 / peak8,
        "int8_passage_min_cosine": float(p_cos.min()), "int8_passage_mean_cosine": float(p_cos.mean()),
        "int8_query_min_cosine": float(q_cos.min()), "int8_query_mean_cosine": float(q_cos.mean()),
        "ort_int8_passage_min_cosine": float(peer_cos.min()), "ort_int8_passage_mean_cosine": float(peer_cos.mean()),
        "int8_p50_ms": float(np.percentile(lat, 50)), "int8_p95_ms": float(np.percentile(lat, 95)),
        "query_tokens_min_median_max": [min(query_tokens), int(np.median(query_tokens)), max(query_tokens)],
    }


def scheduler_name(embedder: Embedder) -> str:
    if embedder.workers > 1:
        return (f"{embedder.workers} micro-batches at once x {max(1, embedder.threads // embedder.workers)} "
                f"thread(s); a single micro-batch on {embedder.threads} threads")
    return "micro-batches one after another"


def report(r: dict) -> None:
    print(f"\n== {r['model']} on {r['device']} ({r['dtype']}, {r['threads']} threads, max_length {r['max_length']})")
    print(f"e5studio: {r['e5studio_runtime']}; {r['e5studio_scheduler']}")
    print(f"passages: {r['passages']} SciFact passages, {r['tokens']} real tokens, best of "
          f"{len(r['e5studio_rounds_s'])} alternating rounds")
    print(f"  e5studio              {r['e5studio_items_s']:8.1f} items/s {r['e5studio_tokens_s']:9.0f} tokens/s "
          f"{r['e5studio_gflops']:7.1f} GFLOP/s = {r['e5studio_peak_fraction']:.0%} of peak")
    print(f"  sentence-transformers {r['st_items_s']:8.1f} items/s {r['st_tokens_s']:9.0f} tokens/s "
          f"{r['st_gflops']:7.1f} GFLOP/s = {r['st_peak_fraction']:.0%} of peak ({r['peak_gflops']:.1f} GFLOP/s)")
    print(f"  ratio e5studio/sentence-transformers: {r['throughput_ratio']:.2f}x   "
          f"min cosine between engines: {r['passage_min_cosine']:.7f}")
    print(f"single queries: {r['queries']} SciFact test queries one at a time, back to back (alternating blocks)")
    print(f"  e5studio              p50 {r['e5studio_p50_ms']:7.2f} ms  p95 {r['e5studio_p95_ms']:7.2f} ms")
    print(f"  sentence-transformers p50 {r['st_p50_ms']:7.2f} ms  p95 {r['st_p95_ms']:7.2f} ms")
    print(f"  p50 ratio e5studio/sentence-transformers: {r['latency_ratio_p50']:.2f}   "
          f"min cosine: {r['query_min_cosine']:.7f}")
    print(f"  after {r['idle_ms']:.0f} ms idle before each of {r['idle_queries']} queries: e5studio p50 "
          f"{r['e5studio_idle_p50_ms']:.2f} ms, sentence-transformers p50 {r['st_idle_p50_ms']:.2f} ms, "
          f"ratio {r['idle_latency_ratio_p50']:.2f}")
    print(f"  tokenising one query: p50 {r['tokenize_p50_ms']:.3f} ms")
    if "int8_tokens_s" not in r:
        return
    print(f"int8 (e5studio --precision int8; int8 matmul peak {r['int8_peak_gops']:.1f} GOP/s, "
          f"{r['int8_peak_gops'] / r['peak_gflops']:.2f}x the fp32 peak)")
    print(f"  e5studio int8           {r['int8_items_s']:8.1f} items/s {r['int8_tokens_s']:9.0f} tokens/s "
          f"{r['int8_gops']:7.1f} GOP/s = {r['int8_peak_fraction']:.0%} of the int8 peak")
    print(f"  ONNX Runtime dyn. int8  {r['ort_int8_tokens_s']:27.0f} tokens/s  "
          f"({r['ort_int8_vs_st_fp32']:.2f}x sentence-transformers fp32)")
    print(f"  ratio int8 / sentence-transformers fp32: {r['int8_vs_st_fp32']:.2f}x   "
          f"int8 / ONNX Runtime int8: {r['int8_vs_ort_int8']:.2f}x")
    print(f"  cosine int8 vs fp32: passages min {r['int8_passage_min_cosine']:.4f} mean "
          f"{r['int8_passage_mean_cosine']:.5f}; queries min {r['int8_query_min_cosine']:.4f} mean "
          f"{r['int8_query_mean_cosine']:.5f} (ONNX Runtime int8 passages: min "
          f"{r['ort_int8_passage_min_cosine']:.4f} mean {r['ort_int8_passage_mean_cosine']:.5f})")
    lo, mid, hi = r["query_tokens_min_median_max"]
    print(f"  single query int8 p50 {r['int8_p50_ms']:.2f} ms  p95 {r['int8_p95_ms']:.2f} ms "
          f"(fp32 p50 {r['e5studio_p50_ms']:.2f} ms; queries of {lo}-{hi} tokens, median {mid})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["all-minilm-l6-v2", str(E5_SHAPE_DIR)])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--max-batch-tokens", type=int, default=EngineSettings().max_batch_tokens)
    parser.add_argument("--passages", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--large-passages", type=int, default=64, help="passages for 24-layer models on CPU")
    parser.add_argument("--large-queries", type=int, default=40, help="queries for 24-layer models on CPU")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-block", type=int, default=20,
                        help="single queries per engine before switching to the other")
    parser.add_argument("--idle-queries", type=int, default=40, help="queries timed after an idle pause")
    parser.add_argument("--idle-ms", type=float, default=50.0, help="the idle pause before each of those")
    parser.add_argument("--tokenizer-from", type=Path, default=None,
                        help="tokenizer files for the E5-shape checkpoint (default: the MiniLM package's)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 rounds (CPU)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    set_threads(args.threads)
    ensure_e5_shape(args.models, args.tokenizer_from)
    device = torch.device("cuda" if args.device.startswith("cuda") else "cpu")
    peak_dtype = torch.float32 if device.type == "cpu" else torch.float16
    peak = matmul_peak(device, peak_dtype)
    print(f"matrix-multiply peak on {device} ({peak_dtype}, {args.threads} threads): {peak:.1f} GFLOP/s", end="")
    if device.type == "cpu" and args.threads > 1:
        per_core = matmul_peak_per_core(args.threads)
        print(f"; one per thread at once: {per_core:.1f} GFLOP/s", end="")
        peak = max(peak, per_core)
    print(" (measured again after every throughput round; the best counts)")
    peaks = [peak]
    run_models(args.models, lambda model: bench_model(model, args, peaks), report, args.json)


if __name__ == "__main__":
    main()
