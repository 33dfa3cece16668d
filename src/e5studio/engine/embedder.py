"""Texts -> float32 [n, dim] E5 embeddings: tokenise, sort by length, token-budget micro-batches, restore order.

The Embedder also owns how its micro-batches are scheduled. On CPU, a micro-batch of a few thousand tokens
keeps one core busy in every matmul, while the same batch spread over all cores pays a synchronisation at
every one of its operations (hundreds per forward). So an input that makes several micro-batches is computed
one micro-batch per worker thread (each worker with its share of the process's threads, the large-batch
runtime), and an input that makes one micro-batch (a single query, a small request) runs in the calling
thread on all the threads, on the runtime the plan picks for its size. Each micro-batch is computed whole by
one thread: the vectors do not depend on how many run at once or on which worker ran which (with one thread
per worker they equal a one-thread sequential run bit for bit).

A request runs here, in :mod:`~e5studio.engine.tokenizer`, and in its runtime's module: the runtime takes the
micro-batch's token ids and returns its pooled rows (:mod:`e5studio.engine.runtimes`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed, wait

import numpy as np
import torch

from e5studio.engine import runtimes
from e5studio.engine.bert import PackedBatch, pack
from e5studio.engine.calibration import CALIBRATION_TEXTS
from e5studio.engine.checkpoint import Checkpoint, load_checkpoint
from e5studio.engine.device import pick_device, pick_dtype, start_workers
from e5studio.engine.encoder import BertEncoder, load_encoder
from e5studio.engine.runtimes import Runtime, RuntimePlan
from e5studio.engine.tokenizer import Tokenizer
from e5studio.errors import InputError, Terminated
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
    """The one engine object the server, batch jobs and evaluation use.

    ``workers``: micro-batches computed at once (CPU; 1 = all in the calling thread).
    """

    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer, encoder: BertEncoder, plan: RuntimePlan,
                 max_batch_tokens: int = 4096, workers: int = 1, threads: int | None = None) -> None:
        if max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be positive")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.checkpoint = checkpoint
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.plan = plan
        self.max_batch_tokens = max_batch_tokens
        self.workers = workers
        self.threads = threads or torch.get_num_threads()
        self.device = str(encoder.word_embeddings.weight.device)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0  # the process that started the pool's threads (a forked child has none of them)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, settings: EngineSettings, workers: int | None = None) -> Embedder:
        """Resolve, read and place the model named in ``settings``; raises ModelError with the reason.

        ``workers``: micro-batches computed at once on CPU (default: one per thread of ``settings.threads``,
        else of the process's torch threads, each worker with one thread); always 1 on GPU. The process's
        thread count is the entry point's to set (:func:`~e5studio.engine.device.set_threads`); this reads it.
        """
        if workers is not None and workers < 1:
            raise ValueError("workers must be at least 1")
        checkpoint = load_checkpoint(settings.model)
        requested = checkpoint.max_length if settings.max_length is None else settings.max_length
        max_length = min(requested, checkpoint.config.max_position_embeddings)
        tokenizer = Tokenizer(checkpoint.path, max_length)
        device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, device)
        # a wrong setting fails before the weights are read
        runtimes.choose(device, dtype, settings.cpu_runtime, settings.precision)
        encoder = load_encoder(checkpoint).to(device=device, dtype=dtype).eval().requires_grad_(False)
        threads = settings.threads or torch.get_num_threads()

        def calibration() -> list[PackedBatch]:
            return [pack(tokenizer.encode(list(CALIBRATION_TEXTS)))]

        plan = runtimes.plan(encoder, device, dtype, settings.cpu_runtime, threads, settings.precision, calibration)
        workers = (workers or threads) if device.type == "cpu" else 1
        return cls(checkpoint, tokenizer, encoder, plan, settings.max_batch_tokens, workers, threads)

    @property
    def dim(self) -> int:
        return self.encoder.config.hidden_size

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def runtime(self) -> str:
        """In words, what computes the micro-batches."""
        dtype = str(self.encoder.word_embeddings.weight.dtype).removeprefix("torch.")
        return f"{self.plan.describe()} ({self.device}, {dtype})"

    @property
    def precision(self) -> str:
        """What the dense layers compute in: ``fp32`` (also for fp16/bf16 on GPU: see dtype), ``bf16`` or ``int8``."""
        return self.plan.precision

    def tokenize(self, texts: Sequence[str], input_type: str | None = None) -> list[np.ndarray]:
        if isinstance(texts, str):
            raise InputError("texts must be a list of strings, not one string")
        return self.tokenizer.encode(texts, input_type)

    def embed(self, texts: Sequence[str], input_type: str | None = None) -> np.ndarray:
        """float32 [len(texts), dim], unit rows, in input order."""
        return self.embed_ids(self.tokenize(texts, input_type))

    def embed_ids(self, sequences: Sequence[np.ndarray], progress: Callable[[int], None] | None = None
                  ) -> np.ndarray:
        """Token-id arrays -> float32 [n, dim] in input order, computed in length-sorted micro-batches.

        ``progress``: called with the number of rows finished so far after each micro-batch (in the calling
        thread, also when the micro-batches run on the worker threads).
        """
        out = np.empty((len(sequences), self.dim), dtype=np.float32)  # [n, dim]
        batches = list(micro_batches([len(s) for s in sequences], self.max_batch_tokens))
        finished = 0
        if len(batches) <= 1 or self.workers == 1:
            alone = len(batches) <= 1
            for idx in batches:  # in the calling thread, on all its threads
                chunk = [sequences[i] for i in idx]
                out[idx] = self.runtime_for(chunk, alone).rows(chunk)  # [b, dim]
                finished += len(idx)
                if progress is not None:
                    progress(finished)
            return out

        def one_worker(idx: list[int]) -> None:
            out[idx] = self.plan.large.rows([sequences[i] for i in idx])  # [b, dim]

        # longest micro-batches first (micro_batches' order), so the last ones to start are the shortest
        futures = {self._worker_pool().submit(one_worker, idx): len(idx) for idx in batches}
        try:
            for future in as_completed(futures):
                future.result()  # the first failure, if any
                finished += futures[future]
                if progress is not None:
                    progress(finished)
        except (KeyboardInterrupt, Terminated):  # Ctrl-C or SIGTERM: the micro-batches not started never start
            for future in futures:
                future.cancel()
            raise
        finally:
            wait(futures)  # every micro-batch has finished, failed or not, before this call returns
        return out

    def runtime_for(self, sequences: Sequence[np.ndarray], alone: bool = True) -> Runtime:
        """The plan's runtime for one micro-batch computed on all the process's threads: the few-token one, where
        the plan has one, for fewer padded tokens than its bound (:func:`runtimes.few_tokens`) when the
        micro-batch is the input's only one (``alone``), else than ``FEW_TOKENS``: an input of several
        micro-batches gets the same runtimes, and so the same vectors, with one worker as with several (the
        workers run the large runtime on every micro-batch of ``FEW_TOKENS`` or more)."""
        few = self.plan.few
        bound = self.plan.few_tokens if alone else runtimes.FEW_TOKENS
        if few is not None and len(sequences) * max(len(s) for s in sequences) < bound:
            return few
        return self.plan.large

    def _worker_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = start_workers(self.workers, max(1, self.threads // self.workers))
                self._pool_pid = os.getpid()
            return self._pool
