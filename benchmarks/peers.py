"""e5studio against the other CPU inference runtimes, in one run, on the same token ids (issue 24, point 6).

    make bench-peers                      # creates benchmarks/.peers-venv first (PyPI: openvino, nncf, onnxruntime,
                                          # ctranslate2), then runs this
    python benchmarks/peers.py --models all-minilm-l6-v2 --passages 256 --queries 60

Per model: sentence-transformers fp32 (its model's forward on our ids, the reference of the cosines); ONNX
Runtime fp32 and dynamic int8 (per-channel weights); OpenVINO fp32, bf16 (where the CPU has it) and int8 (NNCF,
static, calibrated on 32 of the passages); CTranslate2 int8; and e5studio in every precision this CPU offers
(int8 both as the compiled graph, the default, and on FBGEMM, ``--cpu-runtime torch``). Prints tokens/s (best of
two passes over the passages, batches of 32 for the peers, e5studio's own scheduling), single-query p50/p95,
min/mean cosine vs sentence-transformers, the ratio to the best peer of the same precision, the sampled fp32
matmul peak and the CPU's flags. The peers run in their own environment (``benchmarks/peer_runtimes.py`` under
``benchmarks/.peers-venv``), never in the product's; a peer that cannot run here is skipped with its reason.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e5studio.engine.checkpoint import load_checkpoint
from e5studio.engine.cpu import cpu_features
from e5studio.engine.device import set_threads
from e5studio.engine.embedder import Embedder
from e5studio.engine.tokenizer import Tokenizer
from e5studio.settings import EngineSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, E5_SHAPE_DIR, ROOT, ensure_e5_shape, read_jsonl  # noqa: E402
from peer_runtimes import run  # noqa: E402
from throughput import matmul_peak  # noqa: E402

PEERS = ["onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-bf16", "openvino-int8",
         "ctranslate2-int8"]
PEERS_PYTHON = ROOT / "benchmarks" / ".peers-venv" / "bin" / "python"


def cpu_flags() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "lscpu unavailable"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    flags = [f for f in fields.get("Flags", "").split() if f in wanted]
    return f"{fields.get('Model name', '?').strip()}; {' '.join(flags)}"


def sentence_transformers(path: Path, passages: list[np.ndarray], queries: list[np.ndarray]) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    bert = model[0].auto_model.eval()

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return bert(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
                        ).last_hidden_state.numpy()
    return run(forward, passages, queries)


def ours(path: Path, precision: str, cpu_runtime: str, threads: int, passages: list[np.ndarray],
         queries: list[np.ndarray]) -> dict[str, Any]:
    embedder = Embedder.load(EngineSettings(model=str(path), device="cpu", precision=precision,
                                            cpu_runtime=cpu_runtime, threads=threads))
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        vectors = embedder.embed_ids(passages)
        best = min(best, time.perf_counter() - t)
    embedder.embed_ids(queries[:1])
    latencies, rows = [], []
    for q in queries:
        t = time.perf_counter()
        rows.append(embedder.embed_ids([q])[0])
        latencies.append(time.perf_counter() - t)
    return {"passages": vectors, "queries": np.stack(rows), "latencies": np.array(latencies),
            "tokens_per_s": sum(len(s) for s in passages) / best, "detail": embedder.runtime}


def peer(name: str, path: Path, ids_file: Path, work: Path, threads: int) -> dict[str, Any] | str:
    """The peer's result, or why it did not run."""
    if not PEERS_PYTHON.exists():
        return f"no peers environment at {PEERS_PYTHON} (make bench-peers creates it)"
    out = work / f"{name}.npz"
    done = subprocess.run([str(PEERS_PYTHON), str(ROOT / "benchmarks" / "peer_runtimes.py"), name, str(path),
                           str(ids_file), str(out), str(threads), str(work)], capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr.strip() or f"exit status {done.returncode}").splitlines()
        return lines[-1][:300]
    return dict(np.load(out))


def bench(model: str, n_passages: int, n_queries: int, threads: int) -> list[dict[str, Any]]:
    path = load_checkpoint(model).path
    tokenizer = Tokenizer(path, 512)
    held_out = read_jsonl(DATA / "scifact" / "passages.jsonl", "contents", 3000 + n_passages)[3000:]
    passages = tokenizer.encode(held_out, "passage")
    queries = tokenizer.encode(read_jsonl(DATA / "scifact" / "queries.test.jsonl", "query", n_queries), "query")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="e5studio-peers-") as tmp:
        work = Path(tmp)
        ids_file = work / "ids.npz"
        np.savez(ids_file, passages=np.array(passages, dtype=object), queries=np.array(queries, dtype=object))
        print("  sentence-transformers fp32 ...", flush=True)
        reference = sentence_transformers(path, passages, queries)
        rows.append({"runtime": "sentence-transformers", "precision": "fp32", **reference})
        for precision in cpu_features().precisions:
            for cpu_runtime in (["auto", "torch"] if precision == "int8" else ["auto"]):
                label = "e5studio" + (" (FBGEMM)" if cpu_runtime == "torch" else "")
                print(f"  {label} {precision} ...", flush=True)
                rows.append({"runtime": label, "precision": precision,
                             **ours(path, precision, cpu_runtime, threads, passages, queries)})
        for name in PEERS:
            print(f"  {name} ...", flush=True)
            got = peer(name, path, ids_file, work, threads)
            runtime, precision = name.rsplit("-", 1)
            rows.append({"runtime": runtime, "precision": precision, **({"skipped": got} if isinstance(got, str)
                                                                         else got)})
    for row in rows:
        if "skipped" in row:
            continue
        cos = np.concatenate([(row[k] * reference[k]).sum(axis=1) for k in ("passages", "queries")])
        lat = np.sort(row["latencies"]) * 1000
        row.update(min_cos=float(cos.min()), mean_cos=float(cos.mean()), p50_ms=float(np.median(lat)),
                   p95_ms=float(lat[min(len(lat) - 1, int(0.95 * len(lat)))]))
    return rows


def report(model: str, rows: list[dict[str, Any]]) -> None:
    st = rows[0]["tokens_per_s"]
    print(f"\n{model}\n{'runtime':<24}{'prec':<6}{'tokens/s':>10}{'vs ST':>7}{'p50 ms':>9}{'p95 ms':>9}"
          f"{'min cos':>10}{'mean cos':>10}{'vs best peer':>14}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['runtime']:<24}{r['precision']:<6}  skipped: {r['skipped']}")
            continue
        peers = [p["tokens_per_s"] for p in rows if "skipped" not in p and p["precision"] == r["precision"]
                 and not p["runtime"].startswith(("e5studio", "sentence"))]
        versus = f"{r['tokens_per_s'] / max(peers):.2f}x" if peers and r["runtime"].startswith("e5studio") else ""
        print(f"{r['runtime']:<24}{r['precision']:<6}{r['tokens_per_s']:>10,.0f}{r['tokens_per_s'] / st:>7.2f}"
              f"{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['min_cos']:>10.5f}{r['mean_cos']:>10.5f}{versus:>14}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["all-minilm-l6-v2", str(E5_SHAPE_DIR)])
    parser.add_argument("--passages", type=int, nargs="+", default=[256, 32], help="per model, in order")
    parser.add_argument("--queries", type=int, nargs="+", default=[60, 12], help="per model, in order")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    ensure_e5_shape(args.models)
    print(f"CPU: {cpu_flags()}\nengine: {cpu_features().describe()}; threads {args.threads}", flush=True)
    print(f"fp32 matmul peak (sampled now): {matmul_peak(torch.device('cpu'), torch.float32):.0f} GFLOP/s", flush=True)
    results = {}
    for i, model in enumerate(args.models):
        n_p, n_q = args.passages[min(i, len(args.passages) - 1)], args.queries[min(i, len(args.queries) - 1)]
        print(f"{model}: {n_p} passages, {n_q} queries", flush=True)
        rows = bench(model, n_p, n_q, args.threads)
        report(model, rows)
        results[model] = [{k: v for k, v in r.items() if not isinstance(v, np.ndarray)} for r in rows]
    print(f"fp32 matmul peak (sampled again): {matmul_peak(torch.device('cpu'), torch.float32):.0f} GFLOP/s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
