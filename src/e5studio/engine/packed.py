"""Inference-only encoder layers for CPU fp32 serving: prepacked weights, in-place activation, no dropout.

``F.linear`` (MKL's sgemm) is the fastest matmul here for many rows (a micro-batch of thousands of tokens)
but slow for few (one query: about 20 tokens): MKL's small-matrix path is much less efficient than oneDNN's
brgemm kernels. oneDNN's matmul on a weight reordered into its blocked layout once, at load, computes the
few-row products 1.3-2x faster; for many rows it is up to 20% slower on E5-Large's shapes. So
:class:`PackedLinear` keeps both layouts and picks by the number of rows; the cost is a second copy of each
weight matrix (MiniLM +42 MB, E5-Large +1.2 GB). Both compute the same product in different summation
orders: outputs agree to float32 rounding (about 1e-6 relative).

:func:`prepack` turns a loaded encoder into this form. Training keeps the plain ``nn.Linear`` layers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from e5studio.engine.encoder import BertEncoder, EncoderLayer

# Below this many rows oneDNN's prepacked matmul is faster than MKL's sgemm (measured on AVX2, MiniLM and
# E5-Large shapes, 1 and 2 threads; the two are within a few percent of each other from 128 to 512 rows).
FEW_ROWS = 256
_LINEARS = ("qkv", "attn_out", "ffn_in", "ffn_out")


def available() -> bool:
    """Whether this torch build has the oneDNN linear ops (x86-64 and aarch64 builds do)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


class PackedLinear(nn.Module):
    """A frozen ``nn.Linear`` (y = x W^T + b) with ``weight`` also reordered into oneDNN's layout.

    ``state_dict`` is that of the ``nn.Linear`` it was made from (``weight`` [out, in], ``bias`` [out]).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if linear.bias is None:
            raise ValueError("PackedLinear needs a linear layer with a bias")
        self.weight = nn.Parameter(linear.weight.detach(), requires_grad=False)  # [out, in]
        self.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)  # [out]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)  # [out, in], oneDNN layout

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)  # the new weight, repacked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, in] -> [T, out]."""
        if x.shape[0] < FEW_ROWS:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


class InPlaceGELU(nn.Module):
    """GELU written over its input: no second [T, ffn] tensor to allocate (inference only)."""

    def __init__(self, approximate: str) -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.gelu_(x, approximate=self.approximate)


def in_place(activation: nn.Module) -> nn.Module:
    """The in-place form of a feed-forward activation (same values, no new tensor)."""
    if isinstance(activation, nn.ReLU):
        return nn.ReLU(inplace=True)
    if isinstance(activation, nn.GELU):
        return InPlaceGELU(activation.approximate)
    raise ValueError(f"no in-place form of {activation}")


def prepack(encoder: BertEncoder) -> BertEncoder:
    """``encoder`` (fp32, CPU) for inference only: its linear layers made :class:`PackedLinear`, the activation
    applied in place, dropout (a no-op in eval mode) removed.

    Changes ``encoder`` in place and returns it in eval mode; its weights no longer take gradients. Its
    ``state_dict`` keeps the original names, shapes and values.
    """
    if encoder.word_embeddings.weight.dtype != torch.float32 or encoder.word_embeddings.weight.device.type != "cpu":
        raise ValueError("prepack() takes a float32 encoder on the CPU")
    for layer in encoder.layers:
        assert isinstance(layer, EncoderLayer)
        for name in _LINEARS:
            linear = getattr(layer, name)
            if isinstance(linear, nn.Linear):
                setattr(layer, name, PackedLinear(linear))
        layer.activation = in_place(layer.activation)
        layer.dropout = nn.Identity()  # what dropout is in eval mode, without the call into torch
    encoder.embeddings_dropout = nn.Identity()
    encoder.requires_grad_(False)
    return encoder.eval()
