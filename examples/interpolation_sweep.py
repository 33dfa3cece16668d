"""Measure weight interpolation between a fine-tuned model and its base model on several evaluation sets.

For each weight a, the model ``a * tuned + (1 - a) * base`` is evaluated on every ``--eval-dir`` (nDCG@10,
MRR@10, Recall@100, MAP with the E5 prefixes, the pipeline of ``e5studio eval``); the table shows nDCG@10 and
its change against the base model (a = 0). This is how the defaults of ``e5studio train --interpolate`` and
``--max-ood-loss`` were chosen (README, "Fine-tuning that keeps what the base model knew").

    python examples/interpolation_sweep.py --tuned .e5studio/finetune-scifact/run/final \\
        --base all-minilm-l6-v2 --eval-dir ../shared/data/scifact --eval-dir ../shared/data/cranfield \\
        --eval-dir ../shared/data/med --alphas 0 0.25 0.5 0.75 1 --max-length 128
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from e5studio.engine.checkpoint import load_checkpoint, read_weights
from e5studio.engine.embedder import Embedder
from e5studio.engine.encoder import BertEncoder
from e5studio.engine.runtimes import RuntimePlan, TorchRuntime
from e5studio.engine.tokenizer import Tokenizer
from e5studio.jobs.train.selection import interpolate
from e5studio.retrieval.evaluate import evaluate_embedder, load_eval_set


def _progress(title: str, every_s: float = 5.0) -> Callable[[str, int, int], None]:
    """A progress line on stderr at most every ``every_s`` seconds (also when stderr is not a terminal)."""
    last = [0.0]

    def shown(phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s or done >= total:
            last[0] = now
            print(f"{title}: {phase} {done:,}/{total:,}", file=sys.stderr, flush=True)

    return shown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tuned", required=True, help="the fine-tuned model folder (a train job's final/ or best/)")
    parser.add_argument("--base", required=True, help="the model it was fine-tuned from (alias, hub id or folder)")
    parser.add_argument("--eval-dir", action="append", required=True, help="evaluation sets (first: in-domain)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.625, 0.75, 1.0])
    parser.add_argument("--max-length", type=int, default=128, help="passage truncation in evaluation")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base_ckpt = load_checkpoint(args.base)
    tuned_ckpt = load_checkpoint(args.tuned)
    base_weights, tuned_weights = read_weights(base_ckpt), read_weights(tuned_ckpt)
    encoder = BertEncoder(tuned_ckpt.config).eval()
    sets = [load_eval_set(Path(d)) for d in args.eval_dir]
    embedder = Embedder(tuned_ckpt, Tokenizer(tuned_ckpt.path, args.max_length), encoder,
                        RuntimePlan(TorchRuntime(encoder, None)), 8192)
    results: dict[float, dict[str, float]] = {}
    for alpha in sorted(set(args.alphas)):
        encoder.load_state_dict(interpolate(tuned_weights, base_weights, alpha) if alpha > 0 else base_weights)
        results[alpha] = {}
        for evalset in sets:
            t0 = time.perf_counter()
            with torch.inference_mode():
                results[alpha][evalset.name] = evaluate_embedder(
                    embedder, evalset, progress=_progress(f"a = {alpha:g} {evalset.name}"))["ndcg@10"]
            print(f"a = {alpha:g}  {evalset.name}: nDCG@10 {results[alpha][evalset.name]:.4f} "
                  f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)

    names = [s.name for s in sets]
    reference = results.get(0.0)
    print(f"\nnDCG@10 of a * tuned + (1 - a) * base ({args.tuned} from {args.base}; passages cut at "
          f"{args.max_length} tokens); in brackets: the change against the base model (a = 0)")
    print(f"{'a':>6} " + " ".join(f"{n + (' (in)' if i == 0 else ''):>22}" for i, n in enumerate(names)))
    for alpha, row in results.items():
        cells = []
        for n in names:
            delta = f" ({row[n] - reference[n]:+.4f})" if reference is not None else ""
            cells.append(f"{row[n]:.4f}{delta}".rjust(22))
        print(f"{alpha:6g} " + " ".join(cells))
    if args.json:
        Path(args.json).write_text(json.dumps({"tuned": args.tuned, "base": args.base, "max_length": args.max_length,
                                               "ndcg@10": {str(a): r for a, r in results.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
