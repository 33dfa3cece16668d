"""Texts -> float32 [n, dim] E5 embeddings: tokenise, sort by length, token-budget micro-batches, restore order.

On CPU the micro-batches of one input run one per core at once (:mod:`e5studio.engine.parallel`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from e5studio.engine.backend import Backend, TorchBackend
from e5studio.engine.checkpoint import Checkpoint, load_checkpoint
from e5studio.engine.parallel import InOrder, PerCore, Scheduler
from e5studio.engine.tokenizer import Tokenizer
from e5studio.errors import InputError
from e5studio.settings import EngineSettings


def micro_batches(lengths: Sequence[int], max_batch_tokens: int) -> Iterator[list[int]]:
    """Indices grouped longest-first so that (batch size x longest length) stays within the budget.

    The budget counts the padded attention layout, so memory is bounded; dense layers see only real tokens.
    A sequence longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in order:
        longest = lengths[batch[0]] if batch else lengths[i]
        if batch and (len(batch) + 1) * longest > max_batch_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


class Embedder:
    """The one engine object the server, batch jobs, evaluation and training use."""

    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer, backend: Backend,
                 max_batch_tokens: int = 4096, scheduler: Scheduler | None = None) -> None:
        if max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be positive")
        self.checkpoint = checkpoint
        self.tokenizer = tokenizer
        self.backend = backend
        self.max_batch_tokens = max_batch_tokens
        self.scheduler: Scheduler = scheduler or InOrder()

    @classmethod
    def load(cls, settings: EngineSettings, workers: int | None = None) -> Embedder:
        """Resolve, read and place the model named in ``settings``; raises ModelError with the reason.

        ``workers``: micro-batches computed at once on CPU (default: one per torch thread, each worker with one
        thread); always 1 on GPU.
        """
        import torch

        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        if workers is not None and workers < 1:
            raise ValueError("workers must be at least 1")
        checkpoint = load_checkpoint(settings.model)
        requested = checkpoint.max_length if settings.max_length is None else settings.max_length
        max_length = min(requested, checkpoint.config.max_position_embeddings)
        tokenizer = Tokenizer(checkpoint.path, max_length)
        backend = TorchBackend.load(checkpoint, settings.device, settings.dtype, settings.cpu_runtime)
        threads = torch.get_num_threads()
        workers = (workers or threads) if backend.device == "cpu" else 1
        scheduler = PerCore(workers, threads) if workers > 1 else InOrder()
        return cls(checkpoint, tokenizer, backend, settings.max_batch_tokens, scheduler)

    @property
    def dim(self) -> int:
        return self.backend.dim

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    def tokenize(self, texts: Sequence[str], input_type: str | None = None) -> list[np.ndarray]:
        if isinstance(texts, str):
            raise InputError("texts must be a list of strings, not one string")
        return self.tokenizer.encode(texts, input_type)

    def embed(self, texts: Sequence[str], input_type: str | None = None) -> np.ndarray:
        """float32 [len(texts), dim], unit rows, in input order."""
        return self.embed_ids(self.tokenize(texts, input_type))

    def embed_ids(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        """Token-id arrays -> float32 [n, dim] in input order, computed in length-sorted micro-batches."""
        out = np.empty((len(sequences), self.dim), dtype=np.float32)  # [n, dim]

        def compute(idx: list[int]) -> None:
            out[idx] = self.backend.embed_batch([sequences[i] for i in idx])  # [b, dim]

        self.scheduler.run(compute, list(micro_batches([len(s) for s in sequences], self.max_batch_tokens)))
        return out
