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

from e5studio.engine import packed
from e5studio.engine.checkpoint import Checkpoint, read_weights
from e5studio.engine.encoder import BertEncoder, pack
from e5studio.engine.pooling import l2_normalize, mean_pool
from e5studio.errors import ModelError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def for_inference(encoder: BertEncoder, device: torch.device, dtype: torch.dtype) -> BertEncoder:
    """``encoder`` placed for serving, in eval mode: on CPU in fp32 with its layers prepacked for oneDNN
    (:mod:`e5studio.engine.packed`; changes ``encoder`` in place), elsewhere as it is."""
    encoder = encoder.to(device=device, dtype=dtype).eval()
    if device.type == "cpu" and dtype == torch.float32 and packed.available():
        return packed.prepack(encoder)
    return encoder


class TorchBackend:
    """Our BertEncoder on CPU (fp32, prepacked weights) or CUDA (fp16/bf16, fused attention)."""

    def __init__(self, encoder: BertEncoder, device: torch.device) -> None:
        """``encoder``: already on ``device`` in its dtype, in eval mode (see :func:`for_inference`)."""
        self.encoder = encoder
        self.dim = encoder.config.hidden_size
        self.device = str(device)
        self._device = device

    @classmethod
    def load(cls, checkpoint: Checkpoint, device: str = "auto", dtype: str = "auto") -> TorchBackend:
        dev = pick_device(device)
        encoder = BertEncoder(checkpoint.config)
        encoder.load_state_dict(read_weights(checkpoint), strict=True)
        return cls(for_inference(encoder, dev, pick_dtype(dtype, dev)), dev)

    @torch.inference_mode()
    def embed_batch(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        batch = pack(sequences).to(self._device)
        hidden = self.encoder(batch)  # [T, d]
        pooled = l2_normalize(mean_pool(hidden, batch.seq_index, batch.lengths))  # [B, d] fp32
        return pooled.cpu().numpy()
