"""Mean pooling over packed sequences and L2 normalisation, against per-sequence torch computations."""

from __future__ import annotations

import torch

from e5studio.engine.bert import l2_normalize, mean_pool


def test_mean_pool_is_the_mean_of_each_sequence() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = [1, 5, 2, 9]
    hidden = torch.randn(sum(lengths), 6, generator=gen)  # [T, d]
    seq_index = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))

    pooled = mean_pool(hidden, seq_index, torch.tensor(lengths))

    expected = torch.stack([chunk.mean(dim=0) for chunk in hidden.split(lengths)])
    assert pooled.shape == (4, 6)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-6)


def test_mean_pool_accumulates_half_precision_in_fp32() -> None:
    hidden = torch.full((3000, 4), 1.001, dtype=torch.bfloat16)  # a bf16 running sum would saturate
    pooled = mean_pool(hidden, torch.zeros(3000, dtype=torch.long), torch.tensor([3000]))
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, hidden[:1].float(), rtol=0, atol=1e-6)


def test_l2_normalize_gives_unit_rows_in_the_same_direction() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, -2.0], [1e-3, 1e-3]])
    out = l2_normalize(x)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(out, x / x.norm(dim=1, keepdim=True))
