"""The plain encoder (as training builds it, no inference changes) that the CPU inference forms are checked against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from e5studio.engine.checkpoint import Checkpoint, read_weights
from e5studio.engine.encoder import BertEncoder, pack
from e5studio.engine.pooling import l2_normalize, mean_pool


def plain_encoder(checkpoint: Checkpoint) -> BertEncoder:
    """``BertEncoder`` with the checkpoint's weights, in eval mode."""
    encoder = BertEncoder(checkpoint.config)
    encoder.load_state_dict(read_weights(checkpoint), strict=True)
    return encoder.eval()


def encoder_embeddings(encoder: BertEncoder, sequences: Sequence[np.ndarray]) -> np.ndarray:
    """Token-id arrays -> float32 [B, d] through ``encoder`` on one packed batch, mean-pooled and normalised."""
    batch = pack(sequences)
    with torch.inference_mode():
        return l2_normalize(mean_pool(encoder(batch), batch.seq_index, batch.lengths)).numpy()
