"""Evaluating the model being trained with the one evaluation pipeline (:mod:`e5studio.retrieval.evaluate`).

:class:`ModuleBackend` wraps the training module without changing its dtype or device, so the encoder under
training is evaluated exactly as the exported model would be served.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from e5studio.engine.checkpoint import Checkpoint
from e5studio.engine.embedder import Embedder
from e5studio.engine.encoder import BertEncoder, pack
from e5studio.engine.forward import encode
from e5studio.engine.tokenizer import Tokenizer
from e5studio.retrieval.evaluate import DEFAULT_METRICS, EvalSet, evaluate_embedder


class ModuleBackend:
    """The engine's Backend protocol over a live (training) encoder: no copy, no dtype change.

    On CUDA the forward runs under autocast in ``autocast_dtype``; pooling is fp32 either way.
    """

    def __init__(self, encoder: BertEncoder, device: torch.device, autocast_dtype: torch.dtype | None) -> None:
        self.encoder = encoder
        self.dim = encoder.config.hidden_size
        self.device = str(device)
        self._device = device
        self._autocast = autocast_dtype

    @torch.inference_mode()
    def embed_batch(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        batch = pack(sequences).to(self._device)
        return encode(self.encoder, batch, self._autocast).cpu().numpy()  # [B, d] fp32


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Dropout off inside the block; the previous mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def evaluate_module(encoder: BertEncoder, checkpoint: Checkpoint, max_length: int, evalset: EvalSet,
                    device: torch.device, autocast_dtype: torch.dtype | None = None,
                    max_batch_tokens: int = 8192, metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Evaluate the encoder being trained, exactly as the exported model would be served."""
    embedder = Embedder(checkpoint, Tokenizer(checkpoint.path, max_length),
                        ModuleBackend(encoder, device, autocast_dtype), max_batch_tokens)
    with eval_mode(encoder):
        return evaluate_embedder(embedder, evalset, metrics)
