"""Resident memory after load, per precision (issue 24, point 3): each in a fresh process, with the server's
malloc settings, the model loaded and one query embedded; prints RSS in GB.

    python benchmarks/memory.py                       # the E5-Large-V2 shape: fp32, bf16, int8 (graph), int8 (FBGEMM)
    python benchmarks/memory.py --model all-minilm-l6-v2

Targets for the E5-Large shape: int8 <= 0.7 GB, bf16 <= 0.9 GB. On a CPU without native bf16 the bf16 row is
the same load forced through the test override (the memory is the same; bf16 is not offered there).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import E5_SHAPE_DIR, ensure_e5_shape  # noqa: E402

CHILD = """
import sys, torch
from e5studio.serving.allocator import tune_malloc
tune_malloc()
from e5studio.engine import runtimes
from e5studio.engine.cpu import cpu_features, parse_flags
from e5studio.engine.embedder import Embedder
from e5studio.settings import EngineSettings
model, precision, cpu_runtime = sys.argv[1:4]
forced = precision == "bf16" and not cpu_features().bf16
if forced:
    native = parse_flags({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512_bf16"})
    choose = runtimes.choose
    runtimes.choose = lambda *a, **k: choose(*a[:4], native)
    plan = runtimes.plan
    runtimes.plan = lambda *a, **k: plan(*a[:7], native)
embedder = Embedder.load(EngineSettings(model=model, device="cpu", precision=precision, cpu_runtime=cpu_runtime))
embedder.embed(["query: how much memory does the model take"])
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) / 1e6
print(f"{rss:.3f} {embedder.runtime}" + (" [bf16 forced: not offered on this CPU]" if forced else ""))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(E5_SHAPE_DIR))
    args = parser.parse_args()
    ensure_e5_shape([args.model])
    print(f"{args.model}: RSS after load and one query (GB), each in a fresh process", flush=True)
    for precision, cpu_runtime in (("fp32", "auto"), ("bf16", "auto"), ("int8", "auto"), ("int8", "torch")):
        done = subprocess.run([sys.executable, "-c", CHILD, args.model, precision, cpu_runtime],
                              capture_output=True, text=True)
        line = done.stdout.strip() or f"failed: {done.stderr.strip().splitlines()[-1:]}"
        print(f"  {precision:<5} --cpu-runtime {cpu_runtime:<6} {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
