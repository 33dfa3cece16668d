"""Backends turn token ids into pooled, L2-normalised float32 embeddings.

The seam: a backend gets a list of token-id arrays (already tokenised, already cut into one micro-batch)
and returns one row per array. Sorting, batching and tokenising happen in the Embedder, once. An ONNX
Runtime or int8 backend implements the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from e5studio.engine import ort_backend, packed
from e5studio.engine.checkpoint import Checkpoint, read_weights
from e5studio.engine.encoder import BertEncoder, pack
from e5studio.engine.forward import encode
from e5studio.errors import ModelError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CPU_RUNTIMES = ("auto", "torch", "onnxruntime")


class Backend(Protocol):
    dim: int
    device: str

    def embed_batch(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        """Token-id arrays -> float32 [len(sequences), dim], unit rows, same order."""
        ...


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelError(f"unknown dtype {dtype!r} (auto, {', '.join(_DTYPES)})") from None


def for_inference(encoder: BertEncoder, device: torch.device, dtype: torch.dtype,
                  few_rows: bool = True) -> BertEncoder:
    """``encoder`` placed for serving, in eval mode: on CPU in fp32 with its layers prepacked for oneDNN
    (:mod:`e5studio.engine.packed`; changes ``encoder`` in place; ``few_rows=False`` without the oneDNN
    copies, for few-token inputs computed by ONNX Runtime), elsewhere as it is."""
    encoder = encoder.to(device=device, dtype=dtype).eval()
    if device.type == "cpu" and dtype == torch.float32 and packed.available():
        return packed.prepack(encoder, few_rows)
    return encoder


def use_onnxruntime(cpu_runtime: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether few-token micro-batches run on ONNX Runtime: CPU fp32 only; ``auto`` where it is installed."""
    if cpu_runtime not in CPU_RUNTIMES:
        raise ModelError(f"unknown cpu_runtime {cpu_runtime!r} ({', '.join(CPU_RUNTIMES)})")
    if cpu_runtime == "torch" or device.type != "cpu" or dtype != torch.float32:
        return False
    if ort_backend.available():
        return True
    if cpu_runtime == "onnxruntime":
        raise ModelError("cpu_runtime 'onnxruntime' needs the onnxruntime and onnx packages: "
                         "pip install 'e5studio[onnx]'")
    return False


class TorchBackend:
    """Our BertEncoder on CPU (fp32, prepacked weights) or CUDA (fp16/bf16, fused attention).

    On CPU, micro-batches of fewer than ``packed.FEW_ROWS`` tokens padded (single queries) can run on ONNX
    Runtime over the same weights (:mod:`e5studio.engine.ort_backend`): ``few_rows``.
    """

    def __init__(self, encoder: BertEncoder, device: torch.device,
                 few_rows: ort_backend.OrtEncoder | None = None) -> None:
        """``encoder``: already on ``device`` in its dtype, in eval mode (see :func:`for_inference`)."""
        self.encoder = encoder
        self.few_rows = few_rows
        self.dim = encoder.config.hidden_size
        self.device = str(device)
        self._device = device

    @property
    def runtime(self) -> str:
        """In words, what computes the micro-batches."""
        if self.few_rows is not None:
            return f"torch (CPU fp32), ONNX Runtime for micro-batches under {packed.FEW_ROWS} tokens"
        return f"torch ({self.device}, {str(self.encoder.word_embeddings.weight.dtype).removeprefix('torch.')})"

    @classmethod
    def load(cls, checkpoint: Checkpoint, device: str = "auto", dtype: str = "auto",
             cpu_runtime: str = "auto") -> TorchBackend:
        """``cpu_runtime``: ``auto`` (few-token micro-batches on ONNX Runtime where it is installed, CPU fp32
        only), ``torch`` (torch for everything), ``onnxruntime`` (as auto, an error where it is missing)."""
        dev = pick_device(device)
        torch_dtype = pick_dtype(dtype, dev)
        with_ort = use_onnxruntime(cpu_runtime, dev, torch_dtype)
        encoder = BertEncoder(checkpoint.config)
        encoder.load_state_dict(read_weights(checkpoint), strict=True)
        encoder = for_inference(encoder, dev, torch_dtype, few_rows=not with_ort)
        few_rows = ort_backend.OrtEncoder(encoder, torch.get_num_threads()) if with_ort else None
        return cls(encoder, dev, few_rows)

    @torch.inference_mode()
    def embed_batch(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        if self.few_rows is not None and len(sequences) * max(len(s) for s in sequences) < packed.FEW_ROWS \
                and torch.get_num_threads() >= self.few_rows.threads:
            # (a worker of several micro-batches at once has fewer torch threads: it stays on its core, in torch)
            return self.few_rows.embed_batch(sequences)
        batch = pack(sequences).to(self._device)
        return encode(self.encoder, batch).cpu().numpy()  # [B, d] fp32 unit rows
