"""The runtime table: which kernels compute a micro-batch, chosen once when a model loads.

A runtime is an object with a ``name`` and ``rows(sequences)``: a micro-batch's token-id arrays in, float32
[b, d] E5 embeddings (mean-pooled, unit rows) out. It packs or pads the ids, computes the encoder written once
(:mod:`e5studio.engine.bert`) with its own kernels, pools and returns; it calls nothing of its caller.

| runtime              | where                        | kernels                                                   |
|----------------------|------------------------------|-----------------------------------------------------------|
| ``torch``            | CUDA (fp16/bf16), CPU non-fp32 | the encoder module's own layers (what training runs)     |
| ``cpu-many-rows``    | CPU fp32, large micro-batches | MKL sgemm, blocked attention, in-place activation/residual |
| ``cpu-few-rows``     | CPU fp32, few tokens, ``cpu_runtime=torch`` | oneDNN prepacked matmuls with fused post-ops |
| ``onnxruntime``      | CPU fp32, few tokens (default where installed) | ONNX Runtime's MLAS over the same weights   |
| ``cpu-bf16``         | CPU, ``precision=bf16`` (native bf16 only) | oneDNN bf16 matmuls (fp32 sums), fp32 rest |
| ``cpu-int8``         | CPU, ``precision=int8``       | FBGEMM int8 dense layers, per-row activations, fp32 rest |
| ``onnxruntime-int8`` | CPU int8, few tokens (where installed) | the same int8 layers as one MLAS graph    |

:func:`choose` is that table as code: a :class:`RuntimePlan` names the runtime for large micro-batches and,
on CPU, the one for few-token micro-batches (fewer than :data:`FEW_TOKENS` padded tokens: single queries).
The table reads the device, the precision, the CPU's features (:mod:`e5studio.engine.cpu`: bf16 only where
native) and what this machine's builds offer (oneDNN and FBGEMM in torch, ONNX Runtime installed). The vector
width (AVX2, AVX-512, VNNI, AMX) is each library's own dispatch at run time; the plan names the kernel set it
gets (:attr:`RuntimePlan.kernels`). bf16 and int8 keep only their own copy of the dense weights: the encoder's
fp32 ones are released once the runtimes are built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from e5studio.engine import int8_kernels, onnx_graph
from e5studio.engine.bert import (
    Bf16Kernels,
    FewRowsKernels,
    LayersRuntime,
    ManyRowsKernels,
    PackedBatch,
    onednn_available,
    release_dense_weights,
)
from e5studio.engine.cpu import CpuFeatures, cpu_features, unsupported
from e5studio.engine.encoder import BertEncoder, EncoderLayer, TorchRuntime
from e5studio.errors import ModelError
from e5studio.vocabulary import CPU_RUNTIMES, PRECISIONS

Calibration = Callable[[], Sequence[PackedBatch]]  # a few ordinary texts, packed (what int8 measures ranges on)
# A micro-batch computed on all the threads goes to the plan's few-token runtime when it has fewer padded tokens
# (sequences x longest length) than that runtime's bound: below 256, oneDNN's prepacked matmul beats MKL's sgemm
# on MiniLM's and E5-Large's shapes (benchmarks/query_profile.py and benchmarks/throughput.py measure the two
# sides). ONNX Runtime's graph computes real tokens only (padded inside attention alone) and beat MKL on every
# such micro-batch measured, up to the default token budget (AVX2, the two runtimes called alternately on the
# same micro-batches: 8 / 16 / 32 SciFact queries 0.52x / 0.64x / 0.88x MKL's time on MiniLM, 0.81x / 0.89x /
# 0.96x on the E5-Large shape; 4 and 16 passages 0.88-0.94x). Inputs of several micro-batches run on the
# per-core workers, on the large runtime, whatever their size.
FEW_TOKENS = 256
FEW_TOKENS_BY_RUNTIME = {"onnxruntime": 4097}  # every micro-batch of the default budget (4,096 padded tokens)


def few_tokens(runtime: str) -> int:
    """The padded-token bound under which the few-token runtime ``runtime`` computes a micro-batch."""
    return FEW_TOKENS_BY_RUNTIME.get(runtime, FEW_TOKENS)


class Runtime(Protocol):
    name: str

    def rows(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        """Token-id arrays (each with [CLS]/[SEP]) -> float32 [b, d] unit rows, in the same order."""
        ...


def _layers(encoder: BertEncoder) -> list[EncoderLayer]:
    return [layer for layer in encoder.layers if isinstance(layer, EncoderLayer)]


def _cpu_many_rows(encoder: BertEncoder, threads: int, calibration: Calibration | None) -> Runtime:
    return LayersRuntime("cpu-many-rows", encoder, [ManyRowsKernels(layer) for layer in _layers(encoder)])


def _cpu_few_rows(encoder: BertEncoder, threads: int, calibration: Calibration | None) -> Runtime:
    return LayersRuntime("cpu-few-rows", encoder, [FewRowsKernels(layer) for layer in _layers(encoder)])


def _onnxruntime(encoder: BertEncoder, threads: int, calibration: Calibration | None) -> Runtime:
    return onnx_graph.OrtRuntime(encoder, threads)


def _torch(encoder: BertEncoder, threads: int, calibration: Calibration | None) -> Runtime:
    return TorchRuntime(encoder)


def _cpu_int8(encoder: BertEncoder, threads: int, calibration: Calibration | None) -> Runtime:
    return LayersRuntime("cpu-int8", encoder, int8_kernels.int8_layers(encoder, calibration))


def _onnxruntime_int8(encoder: BertEncoder, threads: int, calibration: Calibration | None) -> Runtime:
    from e5studio.engine.int8_graph import Int8GraphRuntime

    return Int8GraphRuntime(encoder, int8_kernels.int8_layers(encoder, calibration), threads)


def _cpu_bf16(encoder: BertEncoder, threads: int, calibration: Calibration | None) -> Runtime:
    encoder.word_embeddings.to(torch.bfloat16)  # the largest table; lookups widen to fp32 when summed
    return LayersRuntime("cpu-bf16", encoder, [Bf16Kernels(layer) for layer in _layers(encoder)])


_BUILDERS: dict[str, Callable[[BertEncoder, int, Calibration | None], Runtime]] = {
    "torch": _torch, "cpu-many-rows": _cpu_many_rows, "cpu-few-rows": _cpu_few_rows,
    "onnxruntime": _onnxruntime, "cpu-int8": _cpu_int8, "cpu-bf16": _cpu_bf16,
    "onnxruntime-int8": _onnxruntime_int8,
}


def build(name: str, encoder: BertEncoder, threads: int, calibration: Calibration | None = None) -> Runtime:
    """The runtime ``name`` of the table over ``encoder`` (already on its device in its dtype, eval mode, no
    gradients). ``threads``: the process's compute threads (ONNX Runtime sizes its pool with it);
    ``calibration``: texts the int8 runtime measures its input ranges on (none: no smoothing)."""
    return _BUILDERS[name](encoder, threads, calibration)


@dataclass(frozen=True)
class RuntimePlan:
    """Which runtime computes which micro-batch; fixed when the model loads."""

    large: Runtime  # every micro-batch, or those of at least ``few_tokens`` padded tokens when ``few`` is set
    few: Runtime | None = None  # few-token micro-batches computed by the calling thread (single queries)
    precision: str = "fp32"  # what the dense layers compute in (fp32 also for CUDA fp16/bf16: see the dtype)
    kernels: str = ""  # the CPU kernel set (CpuFeatures.describe) or the CUDA device
    few_tokens: int = FEW_TOKENS  # the padded-token bound of ``few`` (:func:`few_tokens`)

    def describe(self) -> str:
        names = self.large.name if self.few is None else \
            f"{self.large.name}, {self.few.name} for micro-batches under {self.few_tokens} tokens"
        return f"{self.precision}: {names}" + (f"; {self.kernels}" if self.kernels else "")


def choose(device: torch.device, dtype: torch.dtype, cpu_runtime: str, precision: str = "fp32",
           features: CpuFeatures | None = None) -> tuple[str, str | None]:
    """The table: (runtime for large micro-batches, runtime for few-token ones or None). ``features``: this
    CPU's (default: read once from the machine; tests pass others to run a path this CPU does not offer)."""
    if cpu_runtime not in CPU_RUNTIMES:
        raise ModelError(f"unknown cpu_runtime {cpu_runtime!r} ({', '.join(CPU_RUNTIMES)})")
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    features = cpu_features() if features is None else features
    if precision == "bf16":
        if device.type != "cpu":
            raise ModelError(f"precision bf16 is the CPU's; on {device.type} use --dtype bfloat16 (the default "
                             "there where supported)")
        if dtype != torch.float32:
            raise ModelError("precision bf16 keeps LayerNorm, attention and pooling in fp32: use --dtype auto or "
                             "float32 with it")
        reason = unsupported("bf16", features)
        if reason:
            raise ModelError(reason)
        return "cpu-bf16", None
    if precision == "int8":
        if device.type != "cpu":
            raise ModelError(f"precision int8 runs on the CPU only; on {device.type} use --precision fp32 with "
                             "--dtype float16 or bfloat16 (the default there)")
        if dtype != torch.float32:
            raise ModelError("precision int8 keeps activations in fp32: use --dtype auto or float32 with it")
        if not int8_kernels.available():
            raise ModelError("precision int8 needs torch's FBGEMM quantized kernels (x86-64 builds of torch)")
        if cpu_runtime != "torch" and onnx_graph.available():
            return "onnxruntime-int8", None  # one compiled graph for every micro-batch (int8_graph's docstring)
        if cpu_runtime == "onnxruntime":
            raise ModelError("cpu_runtime 'onnxruntime' needs the onnxruntime and onnx packages: "
                             "pip install 'e5studio[onnx]'")
        return "cpu-int8", None
    if device.type != "cpu" or dtype != torch.float32:
        return "torch", None
    if cpu_runtime != "torch" and onnx_graph.available():
        return "cpu-many-rows", "onnxruntime"
    if cpu_runtime == "onnxruntime":
        raise ModelError("cpu_runtime 'onnxruntime' needs the onnxruntime and onnx packages: "
                         "pip install 'e5studio[onnx]'")
    return "cpu-many-rows", "cpu-few-rows" if onednn_available() else None


def plan(encoder: BertEncoder, device: torch.device, dtype: torch.dtype, cpu_runtime: str, threads: int,
         precision: str = "fp32", calibration: Calibration | None = None, features: CpuFeatures | None = None
         ) -> RuntimePlan:
    """Build the runtimes :func:`choose` names for ``encoder`` (see :func:`build`); for bf16 and int8 the
    encoder's fp32 dense weights are released afterwards (the runtimes hold their own)."""
    large_name, few_name = choose(device, dtype, cpu_runtime, precision, features)
    large = build(large_name, encoder, threads, calibration)
    few = None if few_name is None else build(few_name, encoder, threads, calibration)
    if precision != "fp32":
        release_dense_weights(encoder)
    kernels = str(device) if device.type != "cpu" else (features or cpu_features()).describe()
    return RuntimePlan(large, few, precision, kernels, FEW_TOKENS if few is None else few_tokens(few.name))
