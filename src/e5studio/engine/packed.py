"""Inference-only encoder layers for CPU fp32 serving: prepacked weights, fused small products, no dropout.

``F.linear`` (MKL's sgemm) is the fastest matmul here for many rows (a micro-batch of thousands of tokens)
but slow for few (one query: about 20 tokens): MKL's small-matrix path is much less efficient than oneDNN's
brgemm kernels. oneDNN's matmul on a weight reordered into its blocked layout once, at load, computes the
few-row products 1.3-2x faster; for many rows it is up to 20% slower on E5-Large's shapes. So
:class:`PackedLinear` keeps both layouts and :class:`InferenceLayer` picks by the number of rows; the cost
is a second copy of each weight matrix (MiniLM +42 MB, E5-Large +1.2 GB). Both compute the same product in
different summation orders: outputs agree to float32 rounding (about 1e-6 relative).

A single query is a few dozen rows, where the time goes into the matmuls' weight traffic and into the number
of operations rather than into arithmetic. :class:`InferenceLayer` therefore runs few-row inputs with fewer,
fused operations: the feed-forward activation and both residual additions are oneDNN post-ops of the matmul
that precedes them, and attention is two batched matmuls and a softmax (for a few dozen tokens that beats the
blocked flash kernel of ``scaled_dot_product_attention``, which is kept for many rows).

:func:`prepack` turns a loaded encoder into this form. Training keeps the plain layers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from e5studio.engine.encoder import BertEncoder, EncoderLayer, PackedBatch, attend

# Below this many rows oneDNN's prepacked matmul is faster than MKL's sgemm (measured on AVX2, MiniLM and
# E5-Large shapes, 1 and 2 threads; the two are within a few percent of each other from 128 to 512 rows).
FEW_ROWS = 256


def available() -> bool:
    """Whether this torch build has the oneDNN linear ops (x86-64 and aarch64 builds do)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn._linear_pointwise, "binary")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


class PackedLinear(nn.Module):
    """A frozen ``nn.Linear`` (y = x W^T + b) with ``weight`` also reordered into oneDNN's layout, which
    :meth:`few_rows` and :meth:`few_rows_plus` use; ``forward`` is ``F.linear``.

    ``state_dict`` is that of the ``nn.Linear`` it was made from (``weight`` [out, in], ``bias`` [out]).
    """

    def __init__(self, linear: nn.Linear, few_rows: bool = True) -> None:
        """``few_rows=False``: no oneDNN copy, only ``forward`` (for an encoder whose few-row inputs are
        computed elsewhere, :mod:`e5studio.engine.ort_backend`)."""
        super().__init__()
        if linear.bias is None:
            raise ValueError("PackedLinear needs a linear layer with a bias")
        self.weight = nn.Parameter(linear.weight.detach(), requires_grad=False)  # [out, in]
        self.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)  # [out]
        self.packed: torch.Tensor | None = None  # [out, in], oneDNN layout
        if few_rows:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        if self.packed is not None:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)  # the new weight, repacked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, in] -> [T, out] with MKL's sgemm (many rows)."""
        return F.linear(x, self.weight, self.bias)

    def few_rows(self, x: torch.Tensor, attr: str = "none", algorithm: str = "") -> torch.Tensor:
        """[T, in] -> [T, out] on the packed weight, then oneDNN's post-op ``attr`` ("none", "gelu" with
        algorithm "none"/"tanh", "relu")."""
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, attr, [], algorithm)

    def few_rows_plus(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """[T, in] -> x W^T + b + residual [T, out], the addition fused into the matmul."""
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed, self.bias, "add")


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


def fused_activation(activation: nn.Module) -> tuple[str, str]:
    """oneDNN's post-op (attr, algorithm) for a feed-forward activation."""
    if isinstance(activation, nn.ReLU):
        return "relu", ""
    if isinstance(activation, nn.GELU):
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


class InferenceLayer(nn.Module):
    """:class:`EncoderLayer`'s forward in eval mode on :class:`PackedLinear` weights.

    Same submodule names as the layer it is made from, so the encoder's ``state_dict`` does not change.
    Fewer than ``FEW_ROWS`` tokens take the fused path (module docstring); more take MKL's matmuls, the
    blocked attention kernel, and in-place activation and residual additions.
    """

    def __init__(self, layer: EncoderLayer, few_rows: bool = True) -> None:
        super().__init__()
        self.num_heads = layer.num_heads
        self.qkv = PackedLinear(layer.qkv, few_rows)
        self.attn_out = PackedLinear(layer.attn_out, few_rows)
        self.attn_norm = layer.attn_norm
        self.ffn_in = PackedLinear(layer.ffn_in, few_rows)
        self.ffn_out = PackedLinear(layer.ffn_out, few_rows)
        self.fused_few_rows = few_rows
        self.ffn_norm = layer.ffn_norm
        self.activation = in_place(layer.activation)
        self.fused_activation = fused_activation(layer.activation)

    def forward(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """[T, d] -> [T, d]."""
        d = x.shape[1]
        norm1, norm2 = self.attn_norm, self.ffn_norm
        if self.fused_few_rows and x.shape[0] < FEW_ROWS:
            attended = attend(self.qkv.few_rows(x), batch, self.num_heads, kernel=small_attention)  # [T, d]
            x = F.layer_norm(self.attn_out.few_rows_plus(attended, x), (d,), norm1.weight, norm1.bias, norm1.eps)
            inner = self.ffn_in.few_rows(x, *self.fused_activation)  # [T, ffn], activated
            return F.layer_norm(self.ffn_out.few_rows_plus(inner, x), (d,), norm2.weight, norm2.bias, norm2.eps)
        attended = attend(self.qkv.forward(x), batch, self.num_heads)  # [T, d]
        x = norm1(self.attn_out.forward(attended).add_(x))  # [T, d]
        inner = self.activation(self.ffn_in.forward(x))  # [T, ffn]
        return norm2(self.ffn_out.forward(inner).add_(x))  # [T, d]


def prepack(encoder: BertEncoder, few_rows: bool = True) -> BertEncoder:
    """``encoder`` (fp32, CPU) for inference only: every layer made an :class:`InferenceLayer`, dropout
    (a no-op in eval mode) removed. ``few_rows=False`` leaves out the oneDNN weight copies (and the fused
    few-row path): for an encoder whose few-token inputs run on ONNX Runtime.

    Changes ``encoder`` in place and returns it in eval mode; its weights no longer take gradients. Its
    ``state_dict`` keeps the original names, shapes and values.
    """
    if encoder.word_embeddings.weight.dtype != torch.float32 or encoder.word_embeddings.weight.device.type != "cpu":
        raise ValueError("prepack() takes a float32 encoder on the CPU")
    for i, layer in enumerate(encoder.layers):
        if isinstance(layer, EncoderLayer):
            encoder.layers[i] = InferenceLayer(layer, few_rows)
    encoder.embeddings_dropout = nn.Identity()
    encoder.requires_grad_(False)
    return encoder.eval()
