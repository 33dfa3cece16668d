"""Our own compact BERT encoder in torch, run on packed (padding-free) batches.

A batch of B sequences is one packed stream of T real tokens. Every dense layer (embeddings, QKV, output
projections, feed-forward, LayerNorm) runs on [T, d] with no padding. Only attention sees sequences: the
packed QKV is scattered into [B, H, L, Dh] (L = longest sequence of the batch; batches are length-sorted so
L is close to every length) and run through ``scaled_dot_product_attention`` with a key-padding mask,
then gathered back to [T, d]. The same module trains and serves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from e5studio.engine.checkpoint import BertConfig, Checkpoint, read_weights
from e5studio.engine.layer import bert_block


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


def activation(hidden_act: str) -> nn.Module:
    """The feed-forward activation of a BERT config (``hidden_act``)."""
    if hidden_act == "relu":
        return nn.ReLU()
    return nn.GELU(approximate="none" if hidden_act == "gelu" else "tanh")  # gelu_new, gelu_pytorch_tanh


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
         dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh)) v: [B, H, L, Dh] each, key_mask [B, 1, 1, L] (True = real key) or None."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout_p)


AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor]


def attend(qkv: torch.Tensor, batch: PackedBatch, num_heads: int, dropout_p: float = 0.0,
           kernel: AttentionKernel = sdpa) -> torch.Tensor:
    """Each sequence's multi-head self-attention over its own tokens: packed QKV [T, 3d] -> [T, d].

    Sequences of different lengths are scattered into the padded [B, H, L, Dh] layout with a key mask; when all
    have the same length (one sequence alone included) the packed stream already is that layout. ``kernel``
    computes the attention on that layout (default: ``scaled_dot_product_attention``).
    """
    d = qkv.shape[1] // 3
    b, length, h = batch.num_sequences, batch.max_len, num_heads
    if batch.key_mask is not None:  # scatter into the padded layout
        padded = qkv.new_zeros(b * length, 3 * d)  # [B*L, 3d]
        padded.index_copy_(0, batch.pad_index, qkv)
        qkv = padded
    q, k, v = qkv.view(b, length, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, Dh]
    out = kernel(q, k, v, batch.key_mask, dropout_p)  # [B, H, L, Dh]
    out = out.transpose(1, 2).reshape(b * length, d)  # [B*L, d]
    if batch.key_mask is not None:
        out = out.index_select(0, batch.pad_index)  # [T, d]
    return out


class EncoderLayer(nn.Module):
    """One post-LayerNorm BERT block on packed tokens (:func:`~e5studio.engine.layer.bert_block`) with torch's
    plain kernels: what training runs (dropout, gradients) and what CUDA serves. Its submodules are the
    layer's weights, by the names the other runtimes read them by."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.eps = config.layer_norm_eps
        self.activation = activation(config.hidden_act)
        self.dropout: nn.Module = nn.Dropout(config.hidden_dropout_prob)
        self.attention_dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(d, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, d)
        self.ffn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    # LayerKernels
    def dense(self, x: torch.Tensor, name: str, activation: bool = False,
              residual: torch.Tensor | None = None) -> torch.Tensor:
        y = getattr(self, name)(x)
        if activation:
            return self.activation(y)
        return y if residual is None else residual + self.dropout(y)

    def attention(self, qkv: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return attend(qkv, batch, self.num_heads, self.attention_dropout if self.training else 0.0)

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return getattr(self, name)(x)

    def forward(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return bert_block(self, x, batch)  # [T, d]


class BertEncoder(nn.Module):
    """BERT embeddings + N encoder layers; returns the last hidden state of every real token."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, d)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, d)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, d)
        self.embeddings_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.embeddings_dropout: nn.Module = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        # Training only: recompute each layer's activations in backward instead of keeping them.
        self.gradient_checkpointing = False

    def embed(self, batch: PackedBatch) -> torch.Tensor:
        """The embedding layer: word + position + token type 0 (single-segment inputs), LayerNorm. -> [T, d]"""
        x = (self.word_embeddings(batch.input_ids) + self.position_embeddings(batch.positions)
             + self.token_type_embeddings.weight[0])  # [T, d]
        return self.embeddings_dropout(self.embeddings_norm(x))

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.embed(batch)  # [T, d]
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, batch, use_reentrant=False)  # [T, d]
            else:
                x = layer(x, batch)  # [T, d]
        return x

    def init_weights(self, seed: int, std: float = 0.02) -> None:
        """BERT's initialisation (normal(0, std) matrices, zero biases, unit LayerNorm), seeded."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if "norm" in name:
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)


def load_encoder(checkpoint: Checkpoint) -> BertEncoder:
    """The checkpoint's weights in our encoder (fp32, CPU, train mode): the one loader of the package. Inference
    moves it to its device and dtype and freezes it; training uses it as it is."""
    encoder = BertEncoder(checkpoint.config)
    encoder.load_state_dict(read_weights(checkpoint), strict=True)
    return encoder
