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
| ``cpu-int8``         | CPU, ``precision=int8``       | FBGEMM int8 dense layers, per-row activations, fp32 rest |

:func:`choose` is that table as code: a :class:`RuntimePlan` names the runtime for large micro-batches and,
on CPU, the one for few-token micro-batches (fewer than :data:`FEW_TOKENS` padded tokens: single queries).
The table reads the device, the precision and what this machine's builds offer (oneDNN and FBGEMM in torch,
ONNX Runtime installed); nothing in it depends on the CPU's vector width, so an AVX2 and an AVX-512 machine
pick the same runtimes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from e5studio.engine import int8_kernels, onnx_graph
from e5studio.engine.bert import FewRowsKernels, LayersRuntime, ManyRowsKernels, PackedBatch, onednn_available
from e5studio.engine.encoder import BertEncoder, EncoderLayer, TorchRuntime
from e5studio.errors import ModelError
from e5studio.vocabulary import CPU_RUNTIMES, PRECISIONS

Calibration = Callable[[], Sequence[PackedBatch]]  # a few ordinary texts, packed (what int8 measures ranges on)
# Micro-batches with fewer padded tokens (sequences x longest length) than this go to the few-token runtime:
# below it oneDNN's prepacked matmul and ONNX Runtime's MLAS beat MKL's sgemm on MiniLM's and E5-Large's shapes
# (benchmarks/query_profile.py and benchmarks/throughput.py measure the two sides).
FEW_TOKENS = 256


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


_BUILDERS: dict[str, Callable[[BertEncoder, int, Calibration | None], Runtime]] = {
    "torch": _torch, "cpu-many-rows": _cpu_many_rows, "cpu-few-rows": _cpu_few_rows,
    "onnxruntime": _onnxruntime, "cpu-int8": _cpu_int8,
}


def build(name: str, encoder: BertEncoder, threads: int, calibration: Calibration | None = None) -> Runtime:
    """The runtime ``name`` of the table over ``encoder`` (already on its device in its dtype, eval mode, no
    gradients). ``threads``: the process's compute threads (ONNX Runtime sizes its pool with it);
    ``calibration``: texts the int8 runtime measures its input ranges on (none: no smoothing)."""
    return _BUILDERS[name](encoder, threads, calibration)


@dataclass(frozen=True)
class RuntimePlan:
    """Which runtime computes which micro-batch; fixed when the model loads."""

    large: Runtime  # every micro-batch, or those of at least FEW_TOKENS padded tokens when ``few`` is set
    few: Runtime | None = None  # few-token micro-batches computed by the calling thread (single queries)

    def describe(self) -> str:
        if self.few is None:
            return self.large.name
        return f"{self.large.name}, {self.few.name} for micro-batches under {FEW_TOKENS} tokens"


def choose(device: torch.device, dtype: torch.dtype, cpu_runtime: str, precision: str = "fp32"
           ) -> tuple[str, str | None]:
    """The table: (runtime for large micro-batches, runtime for few-token ones or None)."""
    if cpu_runtime not in CPU_RUNTIMES:
        raise ModelError(f"unknown cpu_runtime {cpu_runtime!r} ({', '.join(CPU_RUNTIMES)})")
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    if precision == "int8":
        if device.type != "cpu":
            raise ModelError(f"precision int8 runs on the CPU only; on {device.type} use --precision fp32 with "
                             "--dtype float16 or bfloat16 (the default there)")
        if dtype != torch.float32:
            raise ModelError("precision int8 keeps activations in fp32: use --dtype auto or float32 with it")
        if not int8_kernels.available():
            raise ModelError("precision int8 needs torch's FBGEMM quantized kernels (x86-64 builds of torch)")
        return "cpu-int8", None  # FBGEMM is as fast for a single query as for many rows: one runtime
    if device.type != "cpu" or dtype != torch.float32:
        return "torch", None
    if cpu_runtime != "torch" and onnx_graph.available():
        return "cpu-many-rows", "onnxruntime"
    if cpu_runtime == "onnxruntime":
        raise ModelError("cpu_runtime 'onnxruntime' needs the onnxruntime and onnx packages: "
                         "pip install 'e5studio[onnx]'")
    return "cpu-many-rows", "cpu-few-rows" if onednn_available() else None


def plan(encoder: BertEncoder, device: torch.device, dtype: torch.dtype, cpu_runtime: str, threads: int,
         precision: str = "fp32", calibration: Calibration | None = None) -> RuntimePlan:
    """Build the runtimes :func:`choose` names for ``encoder`` (see :func:`build`)."""
    large, few = choose(device, dtype, cpu_runtime, precision)
    return RuntimePlan(build(large, encoder, threads, calibration),
                       None if few is None else build(few, encoder, threads, calibration))
