"""How the Embedder runs its micro-batches: one after another, or one per CPU core at once.

On CPU, a micro-batch of a few thousand tokens keeps one core busy in every matmul, while the same batch
spread over all cores pays a synchronisation at every one of its operations (hundreds per forward). So when
an input makes several micro-batches, :class:`PerCore` computes one per worker thread, each worker with its
share of torch's threads; an input that makes one micro-batch (a single query, a small request) runs in the
calling thread on all the threads. Each micro-batch is computed whole by one thread, as :class:`InOrder`
computes it: the vectors do not depend on how many run at once or on which worker ran which (with one torch
thread per worker they equal InOrder's on one thread bit for bit; other thread counts may round differently
in the last bits).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Protocol

import torch

Compute = Callable[[list[int]], None]


class Scheduler(Protocol):
    def run(self, compute: Compute, batches: Sequence[list[int]]) -> None:
        """Call ``compute`` on every micro-batch (a list of input indices); return when all are done."""
        ...


class InOrder:
    """Micro-batches one after another in the calling thread (GPU, a single CPU thread, training)."""

    def run(self, compute: Compute, batches: Sequence[list[int]]) -> None:
        for batch in batches:
            compute(batch)


class PerCore:
    """``workers`` micro-batches at once on CPU, each in its own thread with ``threads // workers`` torch threads.

    The worker threads start with the first input that needs them. Calls may come from any thread.
    """

    def __init__(self, workers: int, threads: int) -> None:
        if workers < 2:
            raise ValueError("PerCore needs at least 2 workers (use InOrder for one)")
        self.workers = workers
        self.threads = threads  # the calling thread's, for inputs of one micro-batch
        self.threads_per_worker = max(1, threads // workers)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0  # the process that started the pool's threads (a forked child has none of them)
        self._lock = threading.Lock()

    def run(self, compute: Compute, batches: Sequence[list[int]]) -> None:
        if len(batches) <= 1:
            if torch.get_num_threads() != self.threads:  # a worker's setting may have reached this thread
                torch.set_num_threads(self.threads)
            for batch in batches:
                compute(batch)
            return
        # longest micro-batches first (micro_batches' order), so the last ones to start are the shortest
        futures = [self._executor().submit(compute, batch) for batch in batches]
        wait(futures)  # every micro-batch has finished, failed or not, before this call returns
        # a worker's set_num_threads also set torch's default for threads not yet started: put it back
        torch.set_num_threads(self.threads)
        for future in futures:
            future.result()  # the first failure, if any

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="e5studio-compute",
                                                initializer=_worker_threads, initargs=(self.threads_per_worker,))
                self._pool_pid = os.getpid()
            return self._pool


def _worker_threads(threads: int) -> None:
    """Give this worker thread ``threads`` torch threads for good.

    torch keeps one thread count per thread, taken from a process-wide default the first time a thread uses
    torch; ``set_num_threads`` sets both. Using torch first makes this thread's count its own, so putting the
    default back afterwards (:meth:`PerCore.run`) leaves it alone.
    """
    torch.get_num_threads()
    torch.set_num_threads(threads)
