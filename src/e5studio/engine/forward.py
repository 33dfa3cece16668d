"""The one forward path: a packed batch of token ids -> pooled, L2-normalised embeddings.

Every user of the encoder (serving runtimes, evaluation, training) calls :func:`encode`; pooling is
written once, in :mod:`e5studio.engine.pooling`.
"""

from __future__ import annotations

import torch
from torch import nn

from e5studio.engine.encoder import PackedBatch
from e5studio.engine.pooling import pool


def encode(encoder: nn.Module, batch: PackedBatch, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``batch`` (already on the encoder's device) -> float32 [B, d] unit rows (mean pooling + L2).

    ``autocast_dtype``: run the encoder under ``torch.autocast`` in that dtype (training and evaluation on
    GPU); ``None`` runs it in its own dtype. Gradients flow when the caller has them enabled.
    """
    device_type = batch.input_ids.device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        hidden = encoder(batch)  # [T, d]
    return pool(hidden, batch)  # [B, d] fp32
