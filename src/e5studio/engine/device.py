"""Where and how the engine computes: ``auto``/``cpu``/``cuda[:N]``, ``auto``/fp32/fp16/bf16, and torch's CPU
threads.

The process's thread count belongs to entry points (the CLI's commands, the server's start, the benchmarks):
they call :func:`set_threads` once; library code reads the count and never sets it. The one exception is the
Embedder's compute workers (:func:`start_workers`), each of which runs its micro-batches on a share of the
process's threads and sets that share for itself alone.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from e5studio.errors import ModelError
from e5studio.vocabulary import DTYPES

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Held while a worker pool starts: its threads' thread-count settings briefly change the process default.
_THREAD_SETTINGS = threading.Lock()


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return TORCH_DTYPES[dtype]
    except KeyError:
        raise ModelError(f"unknown dtype {dtype!r} ({', '.join(DTYPES)})") from None


def set_threads(count: int) -> None:
    """The process's CPU compute threads (torch's intra-op threads), for entry points to call once."""
    if count < 1:
        raise ValueError(f"threads must be at least 1, got {count}")
    torch.set_num_threads(count)


def start_workers(workers: int, threads_per_worker: int) -> ThreadPoolExecutor:
    """``workers`` compute threads with ``threads_per_worker`` torch threads each, all started now.

    torch keeps one thread count per thread, taken from a process-wide default the first time a thread uses
    torch; ``set_num_threads`` sets both. Each worker sets its own count when it starts; once all have, the
    calling thread puts the process default back to its own count (unchanged for itself).
    """
    with _THREAD_SETTINGS:
        own = torch.get_num_threads()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="e5studio-compute",
                                  initializer=_worker_threads, initargs=(threads_per_worker,))
        started = threading.Barrier(workers + 1)
        for _ in range(workers):
            pool.submit(started.wait)
        started.wait()
        torch.set_num_threads(own)
    return pool


def _worker_threads(threads: int) -> None:
    torch.get_num_threads()  # make this thread's count its own before setting it
    torch.set_num_threads(threads)
