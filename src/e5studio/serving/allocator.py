"""Process settings for a long-running server, applied when serving starts: glibc malloc (``mallopt``) and
numpy's BLAS threads.

Why: every new batch shape makes the engine allocate activation buffers of new sizes (MBs each). glibc's
defaults keep what is freed: the mmap threshold grows to the largest block freed so far (so later large
buffers come from the heap, not mmap, and fragment it), the heap top is trimmed only rarely, and each thread
may get its own 64 MB arena. RSS then grows with every new shape (measured: +4.7 MB per request of new
shapes, 528 MB -> 1.33 GB in 60 s of 32 clients). With a fixed mmap threshold large buffers are mmapped and
given back on free, the heap is trimmed, and two arenas serve all threads.

A variable the operator set (``MALLOC_ARENA_MAX`` and the others, which glibc reads itself) wins over ours.
Elsewhere than glibc (macOS, musl) this does nothing.

Python's cyclic garbage collector: a loaded model (torch, tokenizers, the framework) leaves some 270,000 tracked
objects, and every full collection walked them all: 280-330 ms with the event loop stopped, a few times a minute
under load (measured in the server with ``gc.callbacks``, MiniLM). Once a model has loaded, the objects alive then
are moved out of the collector's sight (``gc.freeze``; a full collection then takes ~1 ms); when a model is
unloaded they are given back to it (``gc.unfreeze``) and collected once before the rest is frozen again, so
cycles among an unloaded model's objects are still freed.

numpy's BLAS (OpenBLAS in numpy's wheels) runs on one thread in the server: the engine owns the cores (torch and
ONNX Runtime thread pools, whose threads spin a moment after each run), and a multi-threaded BLAS call beside
them waits for cores that spinning threads hold. Measured on a knowledge-base search over HTTP (a matrix-vector
product over the chunk vectors, ``retrieval/kb_vectors.py``) on 2 cores: 3,000 chunks 69-78 ms at p50 with
OpenBLAS's default threads, 15-22 ms with one (the product alone: 0.4 ms).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading

# mallopt parameter numbers (malloc.h) -> (environment variable glibc reads, value)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
SETTINGS: dict[int, tuple[str, int]] = {
    M_MMAP_THRESHOLD: ("MALLOC_MMAP_THRESHOLD_", 128 * 1024),
    M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", 128 * 1024),
    M_ARENA_MAX: ("MALLOC_ARENA_MAX", 2),
}


_FREEZE_LOCK = threading.Lock()
_freezing = False  # only in a server process (``serve`` turns it on): a test process keeps the usual collector


def freeze_after_loads() -> None:
    """From now on, a model's load freezes the objects alive (the server process calls this once)."""
    global _freezing
    _freezing = True


def freeze_loaded_objects() -> None:
    """Collect once, then take every object alive now out of the collector's sight (module docstring)."""
    if _freezing:
        with _FREEZE_LOCK:
            gc.collect()
            gc.freeze()


def unfreeze_objects() -> None:
    """Give the frozen objects back to the collector (a model was unloaded: its cycles become collectable)."""
    if _freezing:
        with _FREEZE_LOCK:
            gc.unfreeze()


def one_blas_thread() -> None:
    """numpy's OpenBLAS on one thread in this process (module docstring); torch's MKL is not touched, and the
    job processes the server starts keep their own defaults (no environment variable is set)."""
    import numpy  # noqa: F401  (loads its OpenBLAS)
    from threadpoolctl import ThreadpoolController

    ThreadpoolController().select(internal_api="openblas").limit(limits=1)


def tune_malloc() -> dict[str, int]:
    """Apply :data:`SETTINGS` (where the environment does not set them); returns what was applied."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied: dict[str, int] = {}
    for param, (variable, value) in SETTINGS.items():
        if variable not in os.environ and mallopt(param, value) == 1:
            applied[variable] = value
    return applied
