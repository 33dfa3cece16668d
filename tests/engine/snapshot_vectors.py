"""Bit-identity check of the engine across a refactor: embed one fixed set of texts with the bundled MiniLM on
every runtime, precision and scheduling, save the arrays, and compare another checkout's arrays with them.

    # on the old commit (a `git worktree add /tmp/engine-base <commit>` checkout):
    PYTHONPATH=/tmp/engine-base/src python tests/engine/snapshot_vectors.py save /tmp/vectors-base.npz
    # on this checkout:
    PYTHONPATH=$PWD/src python tests/engine/snapshot_vectors.py compare /tmp/vectors-base.npz

``compare`` exits non-zero unless every array is ``np.array_equal`` to the saved one. The script runs against
both the old and the new engine: where they name their internals differently, :func:`direct_runtimes` asks
each for the same runtimes by what it has.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from e5studio.engine.checkpoint import resolve_model
from e5studio.engine.embedder import Embedder
from e5studio.settings import EngineSettings

MINILM = "all-minilm-l6-v2"
THREADS = 2
DATA = Path("/work/shared/data/scifact")


def texts() -> list[str]:
    """Queries and passages of many lengths, an empty text, one character, and texts cut at the max length."""
    passages = [json.loads(line)["contents"] for line in (DATA / "passages.jsonl").open(encoding="utf-8")][:400]
    queries = [json.loads(line)["query"] for line in (DATA / "queries.test.jsonl").open(encoding="utf-8")][:20]
    chosen = [f"query: {q}" for q in queries] + [f"passage: {p[:n]}" for p, n in
                                                  zip(passages[::10], [40, 120, 300, 700, 1500] * 8, strict=True)]
    return [*chosen, "", "a", " ".join(passages[:30]), "query: " + "why " * 400]


def load(**settings: object) -> Callable[[int | None], Embedder]:
    def make(workers: int | None = None) -> Embedder:
        return Embedder.load(EngineSettings(model=MINILM, device="cpu", threads=THREADS, **settings),  # type: ignore[arg-type]
                             workers=workers)
    return make


def schedules(name: str, make: Callable[[int | None], Embedder], ids: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Each text alone, three short queries together, everything in the calling thread, everything on workers."""
    one_thread, workers = make(1), make(None)
    out = {
        f"{name}/alone": np.stack([one_thread.embed_ids([s])[0] for s in ids]),
        f"{name}/queries": one_thread.embed_ids(list(ids[:3])),
        f"{name}/calling-thread": one_thread.embed_ids(ids),
        f"{name}/workers": workers.embed_ids(ids),
    }
    assert workers.workers == THREADS and one_thread.workers == 1
    return out


def direct_runtimes(ids: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Every runtime of the table on one packed batch of all the texts, the short queries alone, and the
    training forward (the encoder module in fp32, pooled)."""
    from e5studio.engine.calibration import CALIBRATION_TEXTS
    from e5studio.engine.checkpoint import load_checkpoint
    from e5studio.engine.encoder import load_encoder, pack
    from e5studio.engine.tokenizer import Tokenizer

    checkpoint = load_checkpoint(MINILM)
    encoder = load_encoder(checkpoint).eval().requires_grad_(False)
    tokenizer = Tokenizer(checkpoint.path, checkpoint.max_length)
    calibration_ids = tokenizer.encode(list(CALIBRATION_TEXTS))
    out: dict[str, np.ndarray] = {}
    batches = {"all": ids, "queries": list(ids[:3])}
    with torch.inference_mode():
        from e5studio.engine.encoder import encode
        for part, seqs in batches.items():
            out[f"training-forward/{part}"] = encode(encoder, pack(seqs)).numpy()
        for name in ("torch", "cpu-many-rows", "cpu-few-rows", "onnxruntime", "cpu-int8"):
            runtime = build_runtime(name, encoder, lambda: [pack(calibration_ids)])
            for part, seqs in batches.items():
                out[f"runtime-{name}/{part}"] = np.asarray(runtime_rows(runtime, seqs))
    return out


def build_runtime(name: str, encoder: torch.nn.Module, calibration: Callable[[], list]) -> object:  # type: ignore[type-arg]
    from e5studio.engine import runtimes

    if hasattr(runtimes, "BUILDERS"):  # the engine before the redesign
        return runtimes.BUILDERS[name](encoder, THREADS, calibration)
    return runtimes.build(name, encoder, THREADS, calibration)  # type: ignore[attr-defined]


def runtime_rows(runtime: object, sequences: Sequence[np.ndarray]) -> np.ndarray:
    if hasattr(runtime, "rows"):  # the engine after the redesign: token ids in, rows out
        return runtime.rows(sequences)
    from e5studio.engine.encoder import pack

    return runtime.embed(pack(sequences))  # type: ignore[attr-defined]


def snapshot() -> dict[str, np.ndarray]:
    torch.set_num_threads(THREADS)
    resolve_model(MINILM)
    ids = load()(1).tokenize(texts())
    arrays: dict[str, np.ndarray] = {}
    arrays.update(schedules("fp32-auto", load(cpu_runtime="auto"), ids))
    arrays.update(schedules("fp32-torch", load(cpu_runtime="torch"), ids))
    arrays.update(schedules("int8", load(precision="int8"), ids))
    arrays.update(schedules("bf16-cpu", load(dtype="bfloat16"), ids))
    arrays.update(direct_runtimes(ids))
    return arrays


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["save", "compare"])
    parser.add_argument("file", type=Path)
    args = parser.parse_args()
    arrays = snapshot()
    if args.action == "save":
        np.savez(args.file, **arrays)
        print(f"saved {len(arrays)} arrays to {args.file}")
        return 0
    saved = np.load(args.file)
    differ = [k for k in saved.files if k not in arrays or not np.array_equal(saved[k], arrays[k])]
    for key in saved.files:
        same = key in arrays and np.array_equal(saved[key], arrays[key])
        gap = "" if same or key not in arrays else f" max |diff| {np.abs(saved[key] - arrays[key]).max():.3g}"
        print(f"{'identical' if same else 'DIFFERENT'}  {key} {saved[key].shape}{gap}")
    missing = sorted(set(arrays) - set(saved.files))
    print(f"{len(saved.files) - len(differ)} of {len(saved.files)} arrays bit-identical"
          + (f"; not in the saved file: {missing}" if missing else ""))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
