"""How much faster int8 can make throughput here at most, from where the fp32 engine's time goes.

int8 speeds up the dense layers only (attention, LayerNorm, GELU, residual adds and the embedding stay fp32,
as issue 12 asks). So, for the micro-batches the throughput benchmark runs (SciFact passages, length-sorted,
the engine's token budget, one thread per micro-batch as the CPU workers run them), this times each step of
the block on the fp32 many-rows runtime and on the int8 runtime (each kernel call timed with the clock: CPU
ops are synchronous), and prints Amdahl's bound for int8 over fp32:

    T_fp32 / (T_dense_fp32 / r + T_rest_int8)

with r = the machine's int8 matmul peak / its fp32 peak, each the best of three samples in the same run (one
thread), and T_rest_int8 what the int8 runtime spends outside its dense layers (its attention runs sequence by
sequence, without the padding fp32's batched attention computes): what int8 would reach with dense layers at
the same share of the int8 peak as fp32 gets of its own and no quantization cost at all. "dense" includes the
activation and residual add fused into it (fp32 in both), so the bound is generous to int8. Multiply by the
fp32 engine's ratio to sentence-transformers (``make bench``) to get the bound against sentence-transformers.

    python benchmarks/int8_ceiling.py --models all-minilm-l6-v2 checkpoints/e5-large-v2-shape
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from e5studio.engine.bert import LayerKernels, bert_block, embedding_layer, pack
from e5studio.engine.device import set_threads
from e5studio.engine.embedder import Embedder, micro_batches
from e5studio.settings import EngineSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, ensure_e5_shape, read_jsonl  # noqa: E402
from int8_peers import int8_matmul_peak  # noqa: E402
from throughput import matmul_peak  # noqa: E402


class Timed:
    """A runtime's layer kernels with the time of each step added to ``times`` (step -> seconds)."""

    def __init__(self, kernels: LayerKernels[torch.Tensor], times: dict[str, float]) -> None:
        self.kernels, self.times = kernels, times

    def _timed(self, step: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.times[step] += time.perf_counter() - t
        return out

    def dense(self, x, name, activation=False, residual=None):  # type: ignore[no-untyped-def]
        step = "dense + activation" if activation else "dense + residual" if residual is not None else "dense"
        return self._timed(step, self.kernels.dense, x, name, activation, residual)

    def attention(self, qkv, batch):  # type: ignore[no-untyped-def]
        return self._timed("attention", self.kernels.attention, qkv, batch)

    def norm(self, x, name):  # type: ignore[no-untyped-def]
        return self._timed("layernorm", self.kernels.norm, x, name)


def breakdown(embedder: Embedder, sequences: list) -> dict[str, float]:  # type: ignore[type-arg]
    """Seconds per step over every micro-batch of ``sequences`` on the large-batch runtime, one thread."""
    runtime = embedder.plan.large
    times: dict[str, float] = defaultdict(float)
    timed = [Timed(k, times) for k in runtime.layers]  # type: ignore[attr-defined]
    with torch.inference_mode():
        for idx in micro_batches([len(s) for s in sequences], embedder.max_batch_tokens):
            batch = pack([sequences[i] for i in idx])
            t = time.perf_counter()
            x = embedding_layer(runtime.inputs, batch.input_ids, batch.positions)  # type: ignore[attr-defined]
            times["embedding"] += time.perf_counter() - t
            for kernels in timed:
                x = bert_block(kernels, x, batch)  # type: ignore[arg-type]
    return dict(times)


def dense_seconds(times: dict[str, float]) -> float:
    return sum(v for k, v in times.items() if k.startswith("dense"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["all-minilm-l6-v2", "checkpoints/e5-large-v2-shape"])
    parser.add_argument("--passages", type=int, default=256, help="SciFact passages (MiniLM-sized models)")
    parser.add_argument("--large-passages", type=int, default=24, help="passages for 24-layer models")
    args = parser.parse_args()
    set_threads(1)
    ensure_e5_shape([str(Path(m).resolve()) for m in args.models])
    fp32_peak = int8_peak = 0.0
    for _ in range(3):  # interleaved: the machine's speed drifts
        fp32_peak = max(fp32_peak, matmul_peak(torch.device("cpu"), torch.float32))
        int8_peak = max(int8_peak, int8_matmul_peak(1))
    r = int8_peak / fp32_peak
    print(f"one thread, best of 3: fp32 matmul peak {fp32_peak:.1f} GFLOP/s, int8 {int8_peak:.1f} GOP/s, r = {r:.2f}")
    corpus = read_jsonl(DATA / "scifact" / "passages.jsonl", "contents", 2000)  # as make bench reads them
    for model in args.models:
        found: dict[str, dict[str, float]] = {}
        for precision in ("fp32", "int8"):
            embedder = Embedder.load(EngineSettings(model=model, threads=1, precision=precision), workers=1)
            many = args.large_passages if embedder.checkpoint.config.num_hidden_layers > 12 else args.passages
            sequences = embedder.tokenize(corpus[:many])
            print(f"{Path(model).name} {precision}: timing every step over {many} passages ...", flush=True)
            breakdown(embedder, sequences[: max(1, many // 8)])  # warm-up
            found[precision] = breakdown(embedder, sequences)
            tokens = sum(len(s) for s in sequences)
        fp32, int8 = found["fp32"], found["int8"]
        total32, total8 = sum(fp32.values()), sum(int8.values())
        print(f"\n== {Path(model).name}: {many} SciFact passages, {tokens:,} tokens, one thread")
        print(f"  {'step':<20} {'fp32 s':>8} {'share':>6} {'int8 s':>8} {'share':>6}")
        for step in sorted(set(fp32) | set(int8), key=lambda k: -fp32.get(k, 0)):
            print(f"  {step:<20} {fp32.get(step, 0):8.3f} {fp32.get(step, 0) / total32:6.1%} "
                  f"{int8.get(step, 0):8.3f} {int8.get(step, 0) / total8:6.1%}")
        print(f"  {'total':<20} {total32:8.3f} {'':6} {total8:8.3f}   int8 / fp32 speed-up {total32 / total8:.2f}x")
        rest = total8 - dense_seconds(int8)
        bound = total32 / (dense_seconds(fp32) / r + rest)
        print(f"  dense layers {dense_seconds(fp32) / total32:.1%} of fp32's time; Amdahl's bound for int8 over "
              f"fp32 (dense at r = {r:.2f}x, no quantization cost): {bound:.2f}x; reached {total32 / total8:.2f}x "
              f"({(total32 / total8 - 1) / (bound - 1):.0%} of the possible gain)")
        print(f"  against sentence-transformers: bound = {bound:.2f} x (fp32 engine / ST from make bench)")


if __name__ == "__main__":
    main()
