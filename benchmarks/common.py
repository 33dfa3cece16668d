"""What the benchmark scripts share: where the data and the E5-Large-shaped checkpoint are, and the run loop."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e5studio.engine.synthetic import write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("E5STUDIO_SHARED_DATA", ROOT.parent / "shared" / "data"))
E5_SHAPE_DIR = ROOT / "checkpoints" / "e5-large-v2-shape"


def read_jsonl(path: Path, field: str, limit: int | None = None) -> list[str]:
    out: list[str] = []
    with path.open() as fh:
        for line in fh:
            if len(out) == limit:
                break
            out.append(json.loads(line)[field])
    return out


def ensure_e5_shape(models: list[str], tokenizer_from: Path | None = None) -> None:
    """Write the E5-Large-V2-shaped checkpoint (seed 0) when one of ``models`` names it and it is missing."""
    if any(Path(m).resolve() == E5_SHAPE_DIR for m in models) and not E5_SHAPE_DIR.is_dir():
        print(f"writing the E5-Large-V2-shaped checkpoint to {E5_SHAPE_DIR} ...", flush=True)
        write_random_checkpoint(E5_SHAPE_DIR, "e5-large-v2", seed=0, tokenizer_from=tokenizer_from)


def run_models(models: list[str], bench: Callable[[str], dict[str, Any]], report: Callable[[dict[str, Any]], None],
               json_path: Path | None) -> None:
    results = []
    for model in models:
        result = bench(model)
        report(result)
        results.append(result)
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))
