"""The BERT encoder block, written once as arithmetic over a set of kernels.

Every runtime of the engine (torch for training and GPU, the CPU many-rows and few-rows kernels, the ONNX
graph, int8) computes the same post-LayerNorm BERT block; what differs is *how* each step is computed (which
matmul, whether the activation or the residual add is fused, which attention kernel) or, for the ONNX graph,
that a step emits graph nodes instead of computing. :func:`bert_block` is that block; a runtime supplies a
:class:`LayerKernels` bound to one layer's weights (named as the encoder's submodules: ``qkv``, ``attn_out``,
``ffn_in``, ``ffn_out``, ``attn_norm``, ``ffn_norm``).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

X = TypeVar("X")

DENSE_LAYERS = ("qkv", "attn_out", "ffn_in", "ffn_out")
NORM_LAYERS = ("attn_norm", "ffn_norm")


class LayerKernels(Protocol[X]):
    """How one runtime computes the steps of one layer. ``X`` is its value type (a tensor, or a graph name)."""

    def dense(self, x: X, name: str, activation: bool = False, residual: X | None = None) -> X:
        """``x W^T + b`` with the named layer's weight [out, in]; then the feed-forward activation when
        ``activation``, or ``+ residual`` when given (dropout, in training, applies before the addition)."""
        ...

    def attention(self, qkv: X, batch: Any) -> X:
        """Each sequence's multi-head self-attention: packed QKV [T, 3d] -> [T, d]."""
        ...

    def norm(self, x: X, name: str) -> X:
        """LayerNorm with the named norm's weight and bias."""
        ...


def bert_block(k: LayerKernels[X], x: X, batch: Any) -> X:
    """One post-LayerNorm BERT block: [T, d] -> [T, d].

    x1 = LN(x + W_o attention(W_qkv x)),  out = LN(x1 + W_2 act(W_1 x1)).
    """
    attended = k.attention(k.dense(x, "qkv"), batch)  # [T, d]
    x = k.norm(k.dense(attended, "attn_out", residual=x), "attn_norm")  # [T, d]
    inner = k.dense(x, "ffn_in", activation=True)  # [T, ffn]
    return k.norm(k.dense(inner, "ffn_out", residual=x), "ffn_norm")  # [T, d]
