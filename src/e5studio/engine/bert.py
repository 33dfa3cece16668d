"""BERT written once, and the CPU fp32 kernel sets that compute it for inference.

**Packed batches.** B sequences are one packed stream of T real tokens (:func:`pack`). Every dense layer runs
on [T, d] with no padding; only attention sees sequences: the packed QKV is scattered into [B, H, L, Dh]
(L = the longest sequence; micro-batches are length-sorted, so L is close to every length), attended with a
key-padding mask and gathered back to [T, d].

**The encoder, written once** as arithmetic over a kernel set: :func:`embedding_layer` (the input layer) and
:func:`bert_block` (one post-LayerNorm block). A kernel set says *how* each step is computed (which matmul,
whether the activation or the residual add is fused, which attention kernel) or, for the ONNX graph, emits
the step as graph nodes; it reads a layer's weights by the encoder's submodule names (``qkv``, ``attn_out``,
``ffn_in``, ``ffn_out``, ``attn_norm``, ``ffn_norm``). The kernel sets: the encoder's own layers (training and
CUDA, :mod:`e5studio.engine.encoder`), MKL for many rows and oneDNN for few (here), int8
(:mod:`e5studio.engine.int8_kernels`), ONNX Runtime (:mod:`e5studio.engine.onnx_graph`). Activation, attention
and pooling are written here once for all of them.

**Kernels for CPU fp32 inference.** ``F.linear`` (MKL's sgemm) is the fastest matmul for many rows (a
micro-batch of thousands of tokens) but slow for few (a single query): MKL's small-matrix path is much less
efficient than oneDNN's brgemm kernels on a weight reordered into oneDNN's blocked layout once, at load (which
in turn is slower than sgemm for many rows). :class:`ManyRowsKernels`: sgemm on the encoder's own weights,
``scaled_dot_product_attention``'s blocked kernel, the activation and both residual additions in place.
:class:`FewRowsKernels`: oneDNN's matmul on a prepacked copy of each weight with the activation or the residual
addition fused as a post-op, and attention as two matmuls and a softmax (for a few dozen tokens that beats the
blocked kernel). Both compute the same products in different summation orders: outputs agree to float32
rounding. :class:`LayersRuntime` runs a kernel set: token ids in, pooled unit rows out, all in this module,
so that a request computed on the CPU runs here alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from e5studio.engine.encoder import BertEncoder, EncoderLayer

X = TypeVar("X")

DENSE_LAYERS = ("qkv", "attn_out", "ffn_in", "ffn_out")
NORM_LAYERS = ("attn_norm", "ffn_norm")


@dataclass(frozen=True)
class PackedBatch:
    """B sequences packed into T tokens, with the index tensors attention and pooling need."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64, restarting at 0 for every sequence
    seq_index: torch.Tensor  # [T] int64, which sequence each token belongs to
    lengths: torch.Tensor  # [B] int64
    pad_index: torch.Tensor  # [T] int64, row of each token in the padded [B * L] layout
    key_mask: torch.Tensor | None  # [B, 1, 1, L] bool (True = real key); None when all lengths are equal
    max_len: int  # L

    @property
    def num_sequences(self) -> int:
        return int(self.lengths.shape[0])

    def to(self, device: torch.device) -> PackedBatch:
        move = {k: getattr(self, k).to(device, non_blocking=True)
                for k in ("input_ids", "positions", "seq_index", "lengths", "pad_index")}
        mask = None if self.key_mask is None else self.key_mask.to(device, non_blocking=True)
        return PackedBatch(key_mask=mask, max_len=self.max_len, **move)


def pack(sequences: Sequence[np.ndarray]) -> PackedBatch:
    """Pack token-id arrays (each with [CLS]/[SEP], non-empty) into one CPU batch."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    if len(lengths) == 0 or lengths.min() < 1:
        raise ValueError("pack() needs at least one non-empty sequence")
    max_len = int(lengths.max())
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)  # [T] start offset of each token's sequence
    positions = np.arange(int(lengths.sum()), dtype=np.int64) - starts  # [T]
    seq_index = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)  # [T]
    pad_index = seq_index * max_len + positions  # [T]
    key_mask = None
    if lengths.min() != max_len:
        mask = np.arange(max_len)[None, :] < lengths[:, None]  # [B, L]
        key_mask = torch.from_numpy(mask[:, None, None, :])  # [B, 1, 1, L]
    return PackedBatch(
        input_ids=torch.from_numpy(np.concatenate(sequences).astype(np.int64, copy=False)),
        positions=torch.from_numpy(positions),
        seq_index=torch.from_numpy(seq_index),
        lengths=torch.from_numpy(lengths),
        pad_index=torch.from_numpy(pad_index),
        key_mask=key_mask,
        max_len=max_len,
    )


class InputKernels(Protocol[X]):
    """How a kernel set computes the input layer. ``X`` is its value type (a tensor, or a graph name)."""

    def lookup(self, table: str, ids: X) -> X:
        """The rows of the named embedding table (``word_embeddings``, ``position_embeddings``) at ``ids``."""
        ...

    def first_row(self, table: str) -> X:
        """Row 0 of the named table (token type 0: every input is a single segment)."""
        ...

    def add(self, a: X, b: X) -> X:
        ...

    def rows(self, x: X) -> X:
        """``x`` as token rows [T, d] (the graph's lookups keep the padded [B, L, d] layout until here)."""
        ...

    def norm(self, x: X, name: str) -> X:
        """LayerNorm with the named norm's weight and bias."""
        ...


class LayerKernels(Protocol[X]):
    """How a kernel set computes the steps of one layer, bound to that layer's weights."""

    def dense(self, x: X, name: str, activation: bool = False, residual: X | None = None) -> X:
        """``x W^T + b`` with the named layer's weight [out, in]; then the feed-forward activation when
        ``activation``, or ``+ residual`` when given (dropout, in training, applies before the addition)."""
        ...

    def attention(self, qkv: X, batch: Any) -> X:
        """Each sequence's multi-head self-attention: packed QKV [T, 3d] -> [T, d]."""
        ...

    def norm(self, x: X, name: str) -> X:
        ...


def embedding_layer(k: InputKernels[X], ids: X, positions: X) -> X:
    """BERT's input layer for single-segment inputs: LN(word[ids] + position[positions] + token type 0)."""
    summed = k.add(k.add(k.lookup("word_embeddings", ids), k.lookup("position_embeddings", positions)),
                   k.first_row("token_type_embeddings"))
    return k.norm(k.rows(summed), "embeddings_norm")  # [T, d]


def bert_block(k: LayerKernels[X], x: X, batch: Any) -> X:
    """One post-LayerNorm BERT block: [T, d] -> [T, d].

    x1 = LN(x + W_o attention(W_qkv x)),  out = LN(x1 + W_2 act(W_1 x1)).
    """
    attended = k.attention(k.dense(x, "qkv"), batch)  # [T, d]
    x = k.norm(k.dense(attended, "attn_out", residual=x), "attn_norm")  # [T, d]
    inner = k.dense(x, "ffn_in", activation=True)  # [T, ffn]
    return k.norm(k.dense(inner, "ffn_out", residual=x), "ffn_norm")  # [T, d]


class ModuleInputs:
    """:class:`InputKernels` on the encoder's own embedding modules (every torch kernel set uses these)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        self.encoder = encoder

    def lookup(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        return getattr(self.encoder, table)(ids)

    def first_row(self, table: str) -> torch.Tensor:
        return getattr(self.encoder, table).weight[0]

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return getattr(self.encoder, name)(x)


def activate(x: torch.Tensor, activation: tuple[str, str]) -> torch.Tensor:
    """The feed-forward activation (``BertConfig.activation``: the function and GELU's approximation)."""
    kind, approximate = activation
    return F.relu(x) if kind == "relu" else F.gelu(x, approximate=approximate)


def activate_(x: torch.Tensor, activation: tuple[str, str]) -> torch.Tensor:
    """:func:`activate` written over ``x`` (same values, no second [T, ffn] tensor; inference only)."""
    kind, approximate = activation
    return torch.relu_(x) if kind == "relu" else torch.ops.aten.gelu_(x, approximate=approximate)


AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
         dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh)) v: [B, H, L, Dh] each, key_mask [B, 1, 1, L] (True = real key) or None."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout_p)


def small_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
                    dropout_p: float = 0.0) -> torch.Tensor:
    """The same attention for few tokens (inference only): two matmuls and a softmax, padding keys masked
    (every sequence has at least one real key). q, k, v [B, H, L, Dh] -> [B, H, L, Dh]."""
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(1.0 / math.sqrt(q.shape[-1]))  # [B, H, L, L]
    if key_mask is not None:
        scores.masked_fill_(key_mask.logical_not(), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def attend_padded(qkv: torch.Tensor, rows: int, length: int, num_heads: int, key_mask: torch.Tensor | None = None,
                  kernel: AttentionKernel = sdpa, dropout_p: float = 0.0) -> torch.Tensor:
    """Attention on the padded layout: QKV [rows * length, 3d] -> [rows * length, d]."""
    d = qkv.shape[1] // 3
    q, k, v = qkv.view(rows, length, 3, num_heads, d // num_heads).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, L, Dh]
    out = kernel(q, k, v, key_mask, dropout_p)  # [B, H, L, Dh]
    return out.transpose(1, 2).reshape(rows * length, d)


def attend(qkv: torch.Tensor, batch: PackedBatch, num_heads: int, dropout_p: float = 0.0,
           kernel: AttentionKernel = sdpa) -> torch.Tensor:
    """Each sequence's multi-head self-attention over its own tokens: packed QKV [T, 3d] -> [T, d].

    Sequences of different lengths are scattered into the padded layout with a key mask; when all have the
    same length (one sequence alone included) the packed stream already is that layout.
    """
    b, length = batch.num_sequences, batch.max_len
    if batch.key_mask is None:
        return attend_padded(qkv, b, length, num_heads, None, kernel, dropout_p)
    padded = qkv.new_zeros(b * length, qkv.shape[1])  # [B*L, 3d]
    padded.index_copy_(0, batch.pad_index, qkv)
    out = attend_padded(padded, b, length, num_heads, batch.key_mask, kernel, dropout_p)  # [B*L, d]
    return out.index_select(0, batch.pad_index)  # [T, d]


def mean_pool(hidden: torch.Tensor, seq_index: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Average of each sequence's token states, in fp32: hidden [T, d] (any float dtype), seq_index [T],
    lengths [B] -> [B, d] float32."""
    sums = hidden.new_zeros((lengths.shape[0], hidden.shape[1]), dtype=torch.float32)  # [B, d]
    sums.index_add_(0, seq_index, hidden.float())
    return sums / lengths.unsqueeze(1).to(torch.float32)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length: [B, d] -> [B, d]."""
    return F.normalize(x, p=2.0, dim=-1)


def pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """The E5 embedding of every sequence (mean pooling + L2): hidden [T, d] -> float32 [B, d] unit rows."""
    return l2_normalize(mean_pool(hidden, batch.seq_index, batch.lengths))


def onednn_available() -> bool:
    """Whether this torch build has the oneDNN linear ops (x86-64 and aarch64 builds do)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn._linear_pointwise, "binary")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


class ManyRowsKernels:
    """One layer's :class:`LayerKernels` for many rows (inference only): MKL's sgemm on the layer's own
    weights (no copies), in-place activation and residual additions."""

    def __init__(self, layer: EncoderLayer) -> None:
        weight = layer.qkv.weight
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ValueError("the CPU kernels take a float32 encoder on the CPU")
        self.num_heads = layer.num_heads
        self.activation = layer.activation
        self.weights = {n: (getattr(layer, n).weight.detach(), getattr(layer, n).bias.detach()) for n in DENSE_LAYERS}
        self.norms = {n: getattr(layer, n) for n in NORM_LAYERS}

    def dense(self, x: torch.Tensor, name: str, activation: bool = False,
              residual: torch.Tensor | None = None) -> torch.Tensor:
        y = F.linear(x, *self.weights[name])  # [T, out]
        if activation:
            return activate_(y, self.activation)
        return y if residual is None else y.add_(residual)

    def attention(self, qkv: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return attend(qkv, batch, self.num_heads)

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        norm = self.norms[name]
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class FewRowsKernels(ManyRowsKernels):
    """One layer's kernels for few rows: oneDNN's matmul on a prepacked copy of each weight with the activation
    (oneDNN's post-op of the same name and approximation) or the residual addition fused; attention as two
    matmuls and a softmax."""

    def __init__(self, layer: EncoderLayer) -> None:
        super().__init__(layer)
        self.packed = {n: torch.ops.mkldnn._reorder_linear_weight(w, None) for n, (w, _) in self.weights.items()}

    def dense(self, x: torch.Tensor, name: str, activation: bool = False,
              residual: torch.Tensor | None = None) -> torch.Tensor:
        packed, bias = self.packed[name], self.weights[name][1]
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, packed, bias, "add")
        attr, algorithm = self.activation if activation else ("none", "")
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, attr, [], algorithm)

    def attention(self, qkv: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return attend(qkv, batch, self.num_heads, kernel=small_attention)


class Bf16Kernels(ManyRowsKernels):
    """One layer's kernels in bf16 (CPUs with native bf16 only: elsewhere oneDNN emulates it, ~100x slower):
    each dense weight held in bf16 alone (the fp32 copy is released), the input rounded to bf16, the product
    summed in fp32 by oneDNN's bf16 matmul and returned as bf16, then widened; bias, activation, residual,
    attention and LayerNorm in fp32, as is pooling."""

    def __init__(self, layer: EncoderLayer) -> None:
        super().__init__(layer)
        self.bf16 = {n: w.to(torch.bfloat16) for n, (w, _) in self.weights.items()}  # [out, in] each
        self.bias = {n: b for n, (_, b) in self.weights.items()}
        self.weights = {}

    def dense(self, x: torch.Tensor, name: str, activation: bool = False,
              residual: torch.Tensor | None = None) -> torch.Tensor:
        y = F.linear(x.to(torch.bfloat16), self.bf16[name]).float().add_(self.bias[name])  # [T, out] fp32
        if activation:
            return activate_(y, self.activation)
        return y if residual is None else y.add_(residual)


def release_dense_weights(encoder: BertEncoder) -> None:
    """Drop the encoder's fp32 dense weights (the bf16 and int8 kernel sets hold their own copies): each becomes
    an empty tensor, so a kernel set built afterwards from them fails loudly instead of computing zeros."""
    for layer in encoder.layers:
        for name in DENSE_LAYERS:
            module = getattr(layer, name)
            module.weight = torch.nn.Parameter(torch.empty(0, dtype=module.weight.dtype), requires_grad=False)


class LayersRuntime:
    """A CPU runtime: the encoder's input layer, then :func:`bert_block` over one kernel set per layer, then
    :func:`pool`. Token ids in, float32 [b, d] unit rows out."""

    def __init__(self, name: str, encoder: BertEncoder, layers: Sequence[LayerKernels[torch.Tensor]]) -> None:
        self.name = name
        self.encoder = encoder
        self.inputs = ModuleInputs(encoder)
        self.layers = list(layers)

    def hidden(self, batch: PackedBatch) -> torch.Tensor:
        """A packed batch -> [T, d] last hidden states of its tokens."""
        x = embedding_layer(self.inputs, batch.input_ids, batch.positions)  # [T, d]
        for kernels in self.layers:
            x = bert_block(kernels, x, batch)  # [T, d]
        return x

    def rows(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        batch = pack(sequences)
        with torch.inference_mode():
            return pool(self.hidden(batch), batch).numpy()  # [b, d]
