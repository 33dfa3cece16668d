"""Batch embedding: the embed-corpus job vs sentence-transformers on the SciFact corpus, in one run.

1. Throughput. The job embeds SciFact's ``passages.jsonl`` (5,183 passages) end to end: reading the JSONL,
   tokenising, length-sorted micro-batches, Parquet shards + manifest, the search index, model load
   included. sentence-transformers encodes the same texts (``encode(batch_size=32,
   normalize_embeddings=True)``, model load excluded). Each runs in its own process (so each peak RSS is
   its own), alternating, with the same torch thread count; the best of ``--rounds`` counts. Prints
   passages/s, tokens/s, the ratio job / sentence-transformers, peak memory, and the smallest cosine
   between the two engines' vectors.
2. Flat memory. The job's peak RSS on SciFact and on SciFact repeated ``--repeat`` times (tiny random
   model, short truncation, windows of 2,000 lines, so it is quick): streaming keeps it the same (memory
   follows the window size, not the corpus size).
3. Retrieval quality: nDCG@10, MRR@10, Recall@100, MAP on SciFact (from the job's own vectors and index),
   Cranfield and MED (``e5studio eval``'s code), for MiniLM without prefixes (as MTEB runs it), and for
   each ``--eval-model`` (a fine-tuned E5, with the E5 prefixes).

    python benchmarks/batch_embed.py                      # MiniLM on CPU, one round (~15-30 min on 2 cores)
    python benchmarks/batch_embed.py --rounds 2 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("E5STUDIO_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- workers


def worker_job(a: argparse.Namespace) -> dict[str, Any]:
    from e5studio.jobs.batch_embed.reader import InputSpec
    from e5studio.jobs.batch_embed.runner import EmbedCorpusSettings, run_job
    from e5studio.settings import EngineSettings

    options = {"threads": a.threads, "max_length": a.max_length, "max_batch_tokens": a.max_batch_tokens,
               "dtype": a.dtype}
    engine = EngineSettings(model=a.model, device=a.device, **{k: v for k, v in options.items() if v is not None})
    settings = EmbedCorpusSettings(input=InputSpec.create(a.input), output=Path(a.output), engine=engine,
                           input_type=None if a.input_type == "none" else a.input_type, window_size=a.window_size,
                           overwrite=True, progress=False)
    t0 = time.perf_counter()
    result = run_job(settings)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "passages": result.manifest["count"], "tokens": result.run["tokens"],
            "peak_rss_mb": _peak_rss_mb()}


def worker_st(a: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from e5studio.engine.checkpoint import resolve_model

    if a.threads:
        torch.set_num_threads(a.threads)
    prefix = "" if a.input_type == "none" else f"{a.input_type}: "
    with open(a.input, encoding="utf-8") as f:
        texts = [t if t.startswith(prefix) else prefix + t for t in (json.loads(line)["contents"] for line in f)]
    from e5studio.engine.device import pick_device, pick_dtype

    device = pick_device(a.device)
    model = SentenceTransformer(str(resolve_model(a.model)), device=str(device))
    model.to(pick_dtype(a.dtype or "auto", device))  # the dtype the job's engine runs in (fp32 on CPU)
    t0 = time.perf_counter()
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    seconds = time.perf_counter() - t0
    np.save(a.output, np.asarray(vectors, dtype=np.float32))
    return {"seconds": seconds, "passages": len(texts), "peak_rss_mb": _peak_rss_mb(),
            "max_seq_length": model.max_seq_length, "dtype": str(next(model.parameters()).dtype)}


def spawn(kind: str, **kwargs: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", kind]
    for key, value in kwargs.items():
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- parts


def throughput(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    import numpy as np

    from e5studio.jobs.batch_embed.writer import read_output

    corpus = DATA / "scifact" / "passages.jsonl"
    common = {"model": a.model, "device": a.device, "threads": a.threads, "input": corpus,
              "input_type": a.input_type, "dtype": a.dtype}
    jobs, sts = [], []
    for r in range(a.rounds):
        order = ["job", "st"] if r % 2 == 0 else ["st", "job"]
        for kind in order:
            if kind == "job":
                jobs.append(spawn("job", output=work / "scifact-out", window_size=a.window_size,
                                  max_batch_tokens=a.max_batch_tokens, **common))
                print(f"  round {r + 1} job: {jobs[-1]['seconds']:.1f} s", flush=True)
            else:
                sts.append(spawn("st", output=work / "st.npy", **common))
                print(f"  round {r + 1} sentence-transformers: {sts[-1]['seconds']:.1f} s", flush=True)
    job = min(jobs, key=lambda x: x["seconds"])
    st = min(sts, key=lambda x: x["seconds"])
    ids, vectors = read_output(work / "scifact-out")
    reference = np.load(work / "st.npy")
    cosines = (vectors.astype(np.float64) * reference.astype(np.float64)).sum(1)
    return {
        "passages": job["passages"], "tokens": job["tokens"],
        "job": {"seconds": round(job["seconds"], 2), "passages_per_s": round(job["passages"] / job["seconds"], 2),
                "tokens_per_s": round(job["tokens"] / job["seconds"], 1), "peak_rss_mb": round(job["peak_rss_mb"])},
        "sentence_transformers": {"seconds": round(st["seconds"], 2),
                                  "passages_per_s": round(st["passages"] / st["seconds"], 2),
                                  "tokens_per_s": round(job["tokens"] / st["seconds"], 1),
                                  "peak_rss_mb": round(st["peak_rss_mb"]), "max_seq_length": st["max_seq_length"],
                                  "dtype": st["dtype"]},
        "ratio_job_vs_st": round(st["seconds"] / job["seconds"], 3),
        "min_cosine_job_vs_st": float(cosines.min()),
        "rounds": {"job_s": [round(j["seconds"], 2) for j in jobs], "st_s": [round(s["seconds"], 2) for s in sts]},
    }


def flat_memory(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    from e5studio.engine.synthetic import write_random_checkpoint

    tiny = write_random_checkpoint(work / "tiny", "tiny", seed=0)
    source = (DATA / "scifact" / "passages.jsonl").read_bytes()
    big = work / "scifact-x.jsonl"
    with big.open("wb") as f:
        for _ in range(a.repeat):
            f.write(source)
    out: dict[str, Any] = {"model": "tiny random BERT, max_length 64", "window_size": 2000}
    for name, path in (("scifact", DATA / "scifact" / "passages.jsonl"), (f"scifact_x{a.repeat}", big)):
        r = spawn("job", model=tiny, device="cpu", threads=a.threads, input=path, input_type="passage",
                  output=work / f"mem-{name}", window_size=2000, max_length=64)
        out[name] = {"passages": r["passages"], "input_mb": round(path.stat().st_size / 2**20, 1),
                     "peak_rss_mb": round(r["peak_rss_mb"]), "seconds": round(r["seconds"], 1)}
        print(f"  {name}: {r['passages']:,} passages, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    return out


def quality(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    from e5studio.engine.embedder import Embedder
    from e5studio.retrieval.evaluate import EvalSettings, load_eval_set, run_eval
    from e5studio.retrieval.index import ExactIndex
    from e5studio.retrieval.metrics import evaluate
    from e5studio.settings import EngineSettings

    results: dict[str, Any] = {}
    embedder = Embedder.load(EngineSettings(model=a.model, device=a.device, threads=a.threads))
    scifact_out = work / "scifact-out"
    if a.input_type == "none" and (scifact_out / "index").is_dir():
        evalset = load_eval_set(DATA / "scifact")
        index = ExactIndex.open(scifact_out / "index")
        hits = index.search(embedder.embed(evalset.queries), 1000)
        run = {q: {h.id: h.score for h in row} for q, row in zip(evalset.query_ids, hits, strict=True)}
        results[f"{a.model} (no prefixes)"] = {"scifact": {k: round(v, 4) for k, v in evaluate(
            evalset.qrels, run, ("ndcg@10", "mrr@10", "recall@100", "map")).items()}}
    else:
        results[f"{a.model} (no prefixes)"] = {}
    names = ["cranfield", "med"] if results[f"{a.model} (no prefixes)"] else ["scifact", "cranfield", "med"]
    for name in names:
        report = run_eval(embedder, EvalSettings(data=DATA / name, query_prefix="", passage_prefix=""))
        results[f"{a.model} (no prefixes)"][name] = report["metrics"]
        print(f"  {a.model} {name}: {report['metrics']}", flush=True)
    for model in a.eval_model:
        other = Embedder.load(EngineSettings(model=model, device=a.device, threads=a.threads))
        results[f"{model} (E5 prefixes)"] = {name: run_eval(other, EvalSettings(data=DATA / name))["metrics"]
                                             for name in ("scifact", "cranfield", "med")}
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="both engines (default auto: fp32 on CPU, bf16/fp16 on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for both engines (default: all cores)")
    p.add_argument("--data", default=None, help="shared data folder (default $E5STUDIO_SHARED_DATA or ../shared/data)")
    p.add_argument("--input-type", default="none", choices=["none", "passage", "query"],
                   help="prefix for the throughput run (default none: how MiniLM is used, and SciFact's eval "
                        "then reuses the job's vectors)")
    p.add_argument("--window-size", type=int, default=10_000)
    p.add_argument("--max-batch-tokens", type=int, default=None)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--repeat", type=int, default=8, help="copies of SciFact in the flat-memory check")
    p.add_argument("--eval-model", action="append", default=[], help="also evaluate this model (E5 prefixes)")
    p.add_argument("--skip", action="append", default=[], choices=["throughput", "memory", "quality"])
    p.add_argument("--json", default=None, help="write all figures to this file")
    # worker mode (internal)
    p.add_argument("--worker", choices=["job", "st"], help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--max-length", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.data:
        global DATA
        DATA = Path(a.data)
    if a.worker:
        print(json.dumps(worker_job(a) if a.worker == "job" else worker_st(a)))
        return 0

    import torch

    threads = a.threads or torch.get_num_threads()
    figures: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "torch_threads": threads,
                                           "torch": torch.__version__}}
    work = Path(tempfile.mkdtemp(prefix="bench-batch-embed-"))
    try:
        if "throughput" not in a.skip:
            print(f"throughput: SciFact passages, {a.model}, input type {a.input_type}", flush=True)
            t = figures["throughput"] = throughput(a, work)
            print(f"  job {t['job']['passages_per_s']} passages/s ({t['job']['tokens_per_s']:,.0f} tokens/s, "
                  f"peak {t['job']['peak_rss_mb']} MB) vs sentence-transformers "
                  f"{t['sentence_transformers']['passages_per_s']} passages/s "
                  f"(peak {t['sentence_transformers']['peak_rss_mb']} MB): "
                  f"ratio {t['ratio_job_vs_st']}x; min cosine {t['min_cosine_job_vs_st']:.6f}", flush=True)
        if "memory" not in a.skip:
            print("flat memory:", flush=True)
            figures["memory"] = flat_memory(a, work)
        if "quality" not in a.skip:
            print("retrieval quality:", flush=True)
            figures["quality"] = quality(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(figures, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
