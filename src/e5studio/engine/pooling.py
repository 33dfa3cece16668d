"""Mean pooling over each packed sequence and L2 normalisation (the E5 recipe)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
