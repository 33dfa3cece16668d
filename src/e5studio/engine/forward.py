"""The one forward path: a packed batch of token ids -> last hidden states -> pooled, L2-normalised embeddings.

Every user of the encoder (the serving runtimes, evaluation, training) goes through :func:`encode`; pooling
is written once, in :mod:`e5studio.engine.pooling`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from e5studio.engine.encoder import PackedBatch
from e5studio.engine.pooling import pool

Forward = Callable[[PackedBatch], torch.Tensor]  # a packed batch -> [T, d]: the encoder module or a runtime


def hidden_states(encoder: Forward, batch: PackedBatch, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``batch`` (on the encoder's device) -> [T, d]; under ``torch.autocast`` in ``autocast_dtype`` when given
    (training and evaluation on GPU), else in the encoder's own dtype."""
    device_type = batch.input_ids.device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        return encoder(batch)


def encode(encoder: Forward, batch: PackedBatch, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``batch`` -> float32 [B, d] unit rows (mean pooling + L2). Gradients flow when the caller has them on."""
    return pool(hidden_states(encoder, batch, autocast_dtype), batch)  # [B, d] fp32
