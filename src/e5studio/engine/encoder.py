"""Our own compact BERT encoder as a torch module: what training runs and what CUDA serves.

The module computes the encoder as written once in :mod:`e5studio.engine.bert` (:func:`~e5studio.engine.bert.
embedding_layer`, :func:`~e5studio.engine.bert.bert_block`) with torch's plain kernels, on packed (padding-free)
batches; its layers also carry dropout and gradient checkpointing for training. Its submodules are the weights
every other kernel set reads, by name. :func:`encode` is the training forward (embeddings with gradients);
:class:`TorchRuntime` serves the module on its device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from e5studio.engine.bert import ModuleInputs, PackedBatch, activate, attend, bert_block, embedding_layer, pack, pool
from e5studio.engine.checkpoint import BertConfig, Checkpoint, read_weights


class Dense(nn.Linear):
    """``nn.Linear`` whose parameters are allocated, not initialised: their values come from
    :meth:`BertEncoder.init_weights` or a checkpoint (torch's random initialisation, thrown away right after,
    took seconds for E5-Large)."""

    def reset_parameters(self) -> None:
        pass


class Table(nn.Embedding):
    """``nn.Embedding`` allocated, not initialised (as :class:`Dense`)."""

    def reset_parameters(self) -> None:
        pass


class EncoderLayer(nn.Module):
    """One post-LayerNorm BERT block on packed tokens with torch's plain kernels (it is its own
    :class:`~e5studio.engine.bert.LayerKernels`): dropout in training, gradients."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.eps = config.layer_norm_eps
        self.activation = config.activation
        self.dropout: nn.Module = nn.Dropout(config.hidden_dropout_prob)
        self.attention_dropout = config.attention_probs_dropout_prob
        self.qkv = Dense(d, 3 * d)
        self.attn_out = Dense(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.ffn_in = Dense(d, config.intermediate_size)
        self.ffn_out = Dense(config.intermediate_size, d)
        self.ffn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    # LayerKernels
    def dense(self, x: torch.Tensor, name: str, activation: bool = False,
              residual: torch.Tensor | None = None) -> torch.Tensor:
        y = getattr(self, name)(x)
        if activation:
            return activate(y, self.activation)
        return y if residual is None else residual + self.dropout(y)

    def attention(self, qkv: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return attend(qkv, batch, self.num_heads, self.attention_dropout if self.training else 0.0)

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return getattr(self, name)(x)

    def forward(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return bert_block(self, x, batch)  # [T, d]


class BertEncoder(nn.Module):
    """BERT embeddings + N encoder layers; returns the last hidden state of every real token. A new encoder's
    weights are uninitialised until :meth:`init_weights` or :func:`load_encoder` (a checkpoint's) set them."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.word_embeddings = Table(config.vocab_size, d)
        self.position_embeddings = Table(config.max_position_embeddings, d)
        self.token_type_embeddings = Table(config.type_vocab_size, d)
        self.embeddings_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.embeddings_dropout: nn.Module = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        # Training only: recompute each layer's activations in backward instead of keeping them.
        self.gradient_checkpointing = False

    def embed(self, batch: PackedBatch) -> torch.Tensor:
        """The input layer (dropout after it in training): -> [T, d]."""
        return self.embeddings_dropout(embedding_layer(ModuleInputs(self), batch.input_ids, batch.positions))

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


def encode(encoder: nn.Module, batch: PackedBatch, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``batch`` (on the encoder's device) -> float32 [B, d] unit rows through the module (possibly wrapped in
    DDP), under ``torch.autocast`` in ``autocast_dtype`` when given (training and evaluation on GPU), else in the
    module's own dtype. Gradients flow when the caller has them on."""
    device_type = batch.input_ids.device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        hidden = encoder(batch)  # [T, d]
    return pool(hidden, batch)  # [B, d] fp32


class TorchRuntime:
    """The module's own forward (what training runs) on its device and dtype: CUDA serving, CPU in fp16/bf16,
    and evaluating a model while it trains (under autocast in ``autocast_dtype`` when given)."""

    name = "torch"

    def __init__(self, encoder: nn.Module, autocast_dtype: torch.dtype | None = None) -> None:
        self.encoder = encoder
        self.autocast_dtype = autocast_dtype
        self.device = next(encoder.parameters()).device

    def rows(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        """Token-id arrays -> float32 [b, d] unit rows."""
        with torch.inference_mode():
            return encode(self.encoder, pack(sequences).to(self.device), self.autocast_dtype).cpu().numpy()
