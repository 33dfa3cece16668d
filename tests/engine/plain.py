"""The plain encoder (as training builds it, no inference changes) that the runtimes are checked against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from e5studio.engine.bert import pack
from e5studio.engine.checkpoint import Checkpoint, read_weights
from e5studio.engine.encoder import BertEncoder, encode


def plain_encoder(checkpoint: Checkpoint) -> BertEncoder:
    """``BertEncoder`` with the checkpoint's weights, in eval mode."""
    encoder = BertEncoder(checkpoint.config)
    encoder.load_state_dict(read_weights(checkpoint), strict=True)
    return encoder.eval()


def encoder_embeddings(encoder: BertEncoder, sequences: Sequence[np.ndarray]) -> np.ndarray:
    """Token-id arrays -> float32 [B, d] through the module (training's forward) on one packed batch."""
    with torch.inference_mode():
        return encode(encoder, pack(sequences)).numpy()
