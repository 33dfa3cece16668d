"""The runtime table: which kernels compute a micro-batch, chosen once when a model loads.

A runtime is a callable ``PackedBatch -> [T, d]`` last hidden states of the batch's real tokens; pooling and
normalisation happen after it, once (:func:`e5studio.engine.forward.encode`). Every runtime computes the same
BERT block (:func:`e5studio.engine.layer.bert_block`) with its own kernels:

| runtime              | where                        | kernels                                                   |
|----------------------|------------------------------|-----------------------------------------------------------|
| ``torch``            | CUDA (fp16/bf16), CPU non-fp32 | the encoder's own layers (what training runs)            |
| ``cpu-many-rows``    | CPU fp32, large micro-batches | MKL sgemm, blocked attention, in-place activation/residual |
| ``cpu-few-rows``     | CPU fp32, few tokens, ``cpu_runtime=torch`` | oneDNN prepacked matmuls with fused post-ops |
| ``onnxruntime``      | CPU fp32, few tokens (default where installed) | ONNX Runtime's MLAS over the same weights   |
| ``cpu-int8``         | CPU, ``precision=int8``       | FBGEMM int8 dense layers, per-row activations, fp32 rest |

:func:`choose` is that table as code: a :class:`RuntimePlan` names the runtime for large micro-batches and,
on CPU, the one for few-token micro-batches (fewer than :data:`FEW_TOKENS` padded tokens: single queries).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from e5studio.engine import cpu_kernels, int8_kernels, onnx_graph
from e5studio.engine.encoder import BertEncoder, EncoderLayer, PackedBatch
from e5studio.engine.forward import encode, hidden_states
from e5studio.engine.layer import LayerKernels, bert_block
from e5studio.errors import ModelError
from e5studio.vocabulary import CPU_RUNTIMES, PRECISIONS

Calibration = Callable[[], Sequence[PackedBatch]]  # a few ordinary texts, packed (what int8 measures ranges on)
# Micro-batches with fewer padded tokens (sequences x longest length) than this go to the few-token runtime.
# Below it oneDNN's prepacked matmul and ONNX Runtime's MLAS beat MKL's sgemm (measured on AVX2, MiniLM and
# E5-Large shapes, 1 and 2 threads; within a few percent of each other from 128 to 512 rows).
FEW_TOKENS = 256


class Runtime(Protocol):
    name: str

    def __call__(self, batch: PackedBatch) -> torch.Tensor:
        """A packed batch (on the runtime's device) -> [T, d] last hidden states of its real tokens."""
        ...

    def embed(self, batch: PackedBatch) -> np.ndarray:
        """A packed batch -> float32 [B, d] pooled, unit rows (the torch runtimes: :func:`encode`)."""
        ...


class TorchPooling:
    """``embed`` for runtimes computed in torch: the one forward path, :func:`~e5studio.engine.forward.encode`."""

    def embed(self, batch: PackedBatch) -> np.ndarray:
        with torch.inference_mode():
            return encode(self, batch).cpu().numpy()  # type: ignore[arg-type]


class TorchRuntime(TorchPooling):
    """The encoder's own layers (the module training runs), in its device and dtype; under autocast in
    ``autocast_dtype`` when given (evaluating a model while it trains on GPU)."""

    name = "torch"

    def __init__(self, encoder: torch.nn.Module, autocast_dtype: torch.dtype | None = None) -> None:
        self.encoder = encoder
        self.autocast_dtype = autocast_dtype

    def __call__(self, batch: PackedBatch) -> torch.Tensor:
        return hidden_states(self.encoder, batch, self.autocast_dtype)


class LayersRuntime(TorchPooling):
    """The encoder's embedding layer, then :func:`bert_block` over one kernel set per layer."""

    def __init__(self, name: str, encoder: BertEncoder, layers: Sequence[LayerKernels[torch.Tensor]]) -> None:
        self.name = name
        self.encoder = encoder
        self.layers = list(layers)

    def __call__(self, batch: PackedBatch) -> torch.Tensor:
        x = self.encoder.embed(batch)  # [T, d]
        for kernels in self.layers:
            x = bert_block(kernels, x, batch)  # [T, d]
        return x


def _layers(encoder: BertEncoder) -> list[EncoderLayer]:
    return [layer for layer in encoder.layers if isinstance(layer, EncoderLayer)]


def cpu_many_rows(encoder: BertEncoder, threads: int, calibration: Calibration | None = None) -> Runtime:
    return LayersRuntime("cpu-many-rows", encoder, [cpu_kernels.ManyRowsKernels(layer) for layer in _layers(encoder)])


def cpu_few_rows(encoder: BertEncoder, threads: int, calibration: Calibration | None = None) -> Runtime:
    return LayersRuntime("cpu-few-rows", encoder, [cpu_kernels.FewRowsKernels(layer) for layer in _layers(encoder)])


def onnxruntime(encoder: BertEncoder, threads: int, calibration: Calibration | None = None) -> Runtime:
    return onnx_graph.OrtRuntime(encoder, threads)


def torch_layers(encoder: BertEncoder, threads: int, calibration: Calibration | None = None) -> Runtime:
    return TorchRuntime(encoder)


def cpu_int8(encoder: BertEncoder, threads: int, calibration: Calibration | None = None) -> Runtime:
    return LayersRuntime("cpu-int8", encoder, int8_kernels.int8_layers(encoder, calibration))


BUILDERS: dict[str, Callable[..., Runtime]] = {
    "torch": torch_layers, "cpu-many-rows": cpu_many_rows, "cpu-few-rows": cpu_few_rows,
    "onnxruntime": onnxruntime, "cpu-int8": cpu_int8,
}


@dataclass(frozen=True)
class RuntimePlan:
    """Which runtime computes which micro-batch; fixed when the model loads."""

    large: Runtime  # every micro-batch, or those of at least FEW_TOKENS padded tokens when ``few`` is set
    few: Runtime | None = None  # few-token micro-batches computed by the calling thread (single queries)

    def pick(self, sequences: Sequence[object]) -> Runtime:
        """The runtime for one micro-batch computed on all the process's threads."""
        if self.few is not None and len(sequences) * max(len(s) for s in sequences) < FEW_TOKENS:  # type: ignore[arg-type]
            return self.few
        return self.large

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
    return "cpu-many-rows", "cpu-few-rows" if cpu_kernels.onednn_available() else None


def plan(encoder: BertEncoder, device: torch.device, dtype: torch.dtype, cpu_runtime: str, threads: int,
         precision: str = "fp32", calibration: Calibration | None = None) -> RuntimePlan:
    """Build the runtimes :func:`choose` names for ``encoder`` (already on ``device`` in ``dtype``, eval mode,
    no gradients). ``threads``: the process's compute threads (ONNX Runtime sizes its pool with it);
    ``calibration``: texts the int8 runtime measures its input ranges on."""
    large, few = choose(device, dtype, cpu_runtime, precision)
    return RuntimePlan(BUILDERS[large](encoder, threads, calibration),
                       None if few is None else BUILDERS[few](encoder, threads, calibration))
