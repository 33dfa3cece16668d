"""Kernels for CPU fp32 inference: MKL's matmuls for many rows, oneDNN's prepacked ones for few.

``F.linear`` (MKL's sgemm) is the fastest matmul here for many rows (a micro-batch of thousands of tokens)
but slow for few (one query: about 20 tokens): MKL's small-matrix path is much less efficient than oneDNN's
brgemm kernels. oneDNN's matmul on a weight reordered into its blocked layout once, at load, computes the
few-row products 1.3-2x faster; for many rows it is up to 20% slower on E5-Large's shapes. The two kernel
sets here compute :func:`~e5studio.engine.layer.bert_block` each way:

- :class:`ManyRowsKernels`: MKL's sgemm on the encoder's own weights, the blocked attention kernel of
  ``scaled_dot_product_attention``, the activation and both residual additions written in place.
- :class:`FewRowsKernels`: oneDNN's matmul on a prepacked copy of each weight (MiniLM +42 MB, E5-Large
  +1.2 GB), the activation and the residual additions fused into the matmul as post-ops, and attention as two
  batched matmuls and a softmax (for a few dozen tokens that beats the blocked flash kernel).

Both compute the same products in different summation orders: outputs agree to float32 rounding (about 1e-6
relative). Training and CUDA keep the encoder's own layers (:class:`~e5studio.engine.encoder.EncoderLayer`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from e5studio.engine.encoder import EncoderLayer, PackedBatch, attend
from e5studio.engine.layer import DENSE_LAYERS


def onednn_available() -> bool:
    """Whether this torch build has the oneDNN linear ops (x86-64 and aarch64 builds do)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn._linear_pointwise, "binary")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def _check_cpu_fp32(layer: EncoderLayer) -> None:
    weight = layer.qkv.weight
    if weight.dtype != torch.float32 or weight.device.type != "cpu":
        raise ValueError("the CPU kernels take a float32 encoder on the CPU")


class ManyRowsKernels:
    """One layer's :class:`~e5studio.engine.layer.LayerKernels` for many rows (inference only): MKL's sgemm
    on the layer's own weights (no copies), in-place activation and residual additions."""

    def __init__(self, layer: EncoderLayer) -> None:
        _check_cpu_fp32(layer)
        self.num_heads = layer.num_heads
        self.weights = {n: (getattr(layer, n).weight.detach(), getattr(layer, n).bias.detach()) for n in DENSE_LAYERS}
        self.norms = {n: getattr(layer, n) for n in ("attn_norm", "ffn_norm")}
        self.in_place_activation = in_place(layer.activation)

    def dense(self, x: torch.Tensor, name: str, activation: bool = False,
              residual: torch.Tensor | None = None) -> torch.Tensor:
        y = F.linear(x, *self.weights[name])  # [T, out]
        if activation:
            return self.in_place_activation(y)
        return y if residual is None else y.add_(residual)

    def attention(self, qkv: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return attend(qkv, batch, self.num_heads)

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        norm = self.norms[name]
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class FewRowsKernels(ManyRowsKernels):
    """One layer's kernels for few rows: oneDNN's matmul on a prepacked copy of each weight with the activation
    or the residual addition fused as a post-op; attention as two matmuls and a softmax."""

    def __init__(self, layer: EncoderLayer) -> None:
        super().__init__(layer)
        self.packed = {n: torch.ops.mkldnn._reorder_linear_weight(w, None) for n, (w, _) in self.weights.items()}
        self.post_op = fused_activation(layer.activation)

    def dense(self, x: torch.Tensor, name: str, activation: bool = False,
              residual: torch.Tensor | None = None) -> torch.Tensor:
        packed, bias = self.packed[name], self.weights[name][1]
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, packed, bias, "add")
        attr, algorithm = self.post_op if activation else ("none", "")
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, attr, [], algorithm)

    def attention(self, qkv: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return attend(qkv, batch, self.num_heads, kernel=small_attention)


class InPlaceGELU(torch.nn.Module):
    """GELU written over its input: no second [T, ffn] tensor to allocate (inference only)."""

    def __init__(self, approximate: str) -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.gelu_(x, approximate=self.approximate)


def in_place(activation: torch.nn.Module) -> torch.nn.Module:
    """The in-place form of a feed-forward activation (same values, no new tensor)."""
    if isinstance(activation, torch.nn.ReLU):
        return torch.nn.ReLU(inplace=True)
    if isinstance(activation, torch.nn.GELU):
        return InPlaceGELU(activation.approximate)
    raise ValueError(f"no in-place form of {activation}")


def fused_activation(activation: torch.nn.Module) -> tuple[str, str]:
    """oneDNN's post-op (attr, algorithm) for a feed-forward activation."""
    if isinstance(activation, torch.nn.ReLU):
        return "relu", ""
    if isinstance(activation, torch.nn.GELU):
        return "gelu", activation.approximate  # "none" (erf) or "tanh"
    raise ValueError(f"no oneDNN post-op for {activation}")


def small_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
                    dropout_p: float = 0.0) -> torch.Tensor:
    """An attention kernel for :func:`~e5studio.engine.encoder.attend` on few tokens (inference only):
    softmax(q k^T / sqrt(Dh)) v as two matmuls and a softmax; padding keys masked (every sequence has at
    least one real key). q, k, v [B, H, L, Dh] -> [B, H, L, Dh]."""
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(1.0 / math.sqrt(q.shape[-1]))  # [B, H, L, L]
    if key_mask is not None:
        scores.masked_fill_(key_mask.logical_not(), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)
