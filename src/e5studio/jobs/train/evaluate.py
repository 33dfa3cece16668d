"""Evaluating the model being trained with the one evaluation pipeline (:mod:`e5studio.retrieval.evaluate`).

The training module is evaluated through the engine's ``torch`` runtime (:class:`~e5studio.engine.runtimes.
TorchRuntime`), without changing its dtype or device, so the encoder under training is evaluated exactly as the
exported model would be served.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from e5studio.engine.checkpoint import Checkpoint
from e5studio.engine.embedder import Embedder
from e5studio.engine.encoder import BertEncoder
from e5studio.engine.runtimes import RuntimePlan, TorchRuntime
from e5studio.engine.tokenizer import Tokenizer
from e5studio.retrieval.evaluate import DEFAULT_METRICS, EvalSet, PhaseProgress, evaluate_embedder


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
                    max_batch_tokens: int = 8192, metrics: Sequence[str] = DEFAULT_METRICS,
                    progress: PhaseProgress | None = None, corpus: Any = None) -> dict[str, float]:
    """Evaluate the encoder being trained, exactly as the exported model would be served."""
    embedder = Embedder(checkpoint, Tokenizer(checkpoint.path, max_length), encoder,
                        RuntimePlan(TorchRuntime(encoder, autocast_dtype)), max_batch_tokens)
    with eval_mode(encoder):
        return evaluate_embedder(embedder, evalset, metrics, progress, corpus)


@dataclass(frozen=True)
class ModuleEvaluator:
    """:func:`evaluate_module` bound to what stays fixed during a run: the start checkpoint (tokenizer, config),
    the evaluation max length, the device, the autocast dtype and the token budget of a batch."""

    checkpoint: Checkpoint
    max_length: int
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    max_batch_tokens: int = 8192

    def __call__(self, encoder: BertEncoder, evalset: EvalSet, progress: PhaseProgress | None = None,
                 corpus: Any = None) -> dict[str, float]:
        return evaluate_module(encoder, self.checkpoint, self.max_length, evalset, self.device, self.autocast_dtype,
                               self.max_batch_tokens, progress=progress, corpus=corpus)
