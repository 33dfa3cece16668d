"""Mean pooling over each packed sequence and L2 normalisation (the E5 recipe), written once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from e5studio.engine.encoder import PackedBatch


def mean_pool(hidden: torch.Tensor, seq_index: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Average of each sequence's token states, in fp32.

    hidden [T, d] (any float dtype), seq_index [T], lengths [B] -> [B, d] float32.
    """
    sums = hidden.new_zeros((lengths.shape[0], hidden.shape[1]), dtype=torch.float32)  # [B, d]
    sums.index_add_(0, seq_index, hidden.float())
    return sums / lengths.unsqueeze(1).to(torch.float32)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length: [B, d] -> [B, d]."""
    return F.normalize(x, p=2.0, dim=-1)


def pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """The E5 embedding of every sequence of a packed batch: hidden [T, d] -> float32 [B, d] unit rows."""
    return l2_normalize(mean_pool(hidden, batch.seq_index, batch.lengths))
