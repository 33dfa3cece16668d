"""The plain encoder (as training builds it, no inference changes) that the runtimes are checked against."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from e5studio.engine.checkpoint import Checkpoint, read_weights
from e5studio.engine.encoder import BertEncoder, PackedBatch, pack
from e5studio.engine.forward import encode


def plain_encoder(checkpoint: Checkpoint) -> BertEncoder:
    """``BertEncoder`` with the checkpoint's weights, in eval mode."""
    encoder = BertEncoder(checkpoint.config)
    encoder.load_state_dict(read_weights(checkpoint), strict=True)
    return encoder.eval()


def encoder_embeddings(encoder: Callable[[PackedBatch], torch.Tensor], sequences: Sequence[np.ndarray]) -> np.ndarray:
    """Token-id arrays -> float32 [B, d] through ``encoder`` (a module or a runtime) on one packed batch,
    mean-pooled and normalised."""
    with torch.inference_mode():
        return encode(encoder, pack(sequences)).numpy()  # type: ignore[arg-type]
