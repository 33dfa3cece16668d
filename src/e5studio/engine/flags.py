"""The engine's command-line flags and the EngineSettings built from them, shared by every CLI command."""

from __future__ import annotations

import argparse

from e5studio.engine.cpu import cpu_features
from e5studio.settings import EngineSettings
from e5studio.vocabulary import CPU_RUNTIMES, PRECISIONS


def add_engine_flags(parser: argparse.ArgumentParser, model_help: str, model_required: bool = False) -> None:
    parser.add_argument("--model", required=model_required, default=None, help=model_help)
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default=None, help="auto (default: fp32 on CPU, bf16/fp16 on CUDA), float32, "
                                                      "float16, bfloat16")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    parser.add_argument("--max-batch-tokens", type=int, default=None,
                        help="token budget of one micro-batch (default 4096)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="truncate inputs at this many tokens incl. [CLS]/[SEP] (default: the model's, 512 for E5)")
    parser.add_argument("--cpu-runtime", default=None, choices=CPU_RUNTIMES,
                        help="CPU fp32: auto (default) runs single queries and other few-token micro-batches on "
                             "ONNX Runtime where installed, torch for the rest; torch: torch only")


    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="fp32 (default); bf16: dense layers in bf16 with fp32 sums (CPUs with native bf16 "
                             "only: AVX512-BF16 or AMX); int8: every dense layer in int8, quantized at load from the "
                             "fp32 weights (CPU only; vectors within cosine 0.99 of fp32). Offered on this CPU: "
                             f"{', '.join(cpu_features().precisions)}")


def engine_settings(args: argparse.Namespace, model: str | None = None) -> EngineSettings:
    return EngineSettings.from_env(model=model or args.model, device=args.device, dtype=args.dtype,
                                   threads=args.threads, max_batch_tokens=args.max_batch_tokens,
                                   max_length=args.max_length, cpu_runtime=args.cpu_runtime,
                                   precision=getattr(args, "precision", None))
