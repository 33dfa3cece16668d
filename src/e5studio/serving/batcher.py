"""Dynamic batching: many requests, one engine worker per loaded model.

Requests are tokenised in the request path and queued here as token-id arrays. One worker thread takes
every queued request that fits in the token budget (what piled up while the previous batch computed),
drops those whose client left, runs them as one engine call and hands each request its own rows.
The queue is bounded (full -> CapacityError, HTTP 429). Every accepted request ends with its rows or an
error, also when a batch crashes; the worker survives any exception of the engine.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from e5studio.errors import CapacityError, ClientGone, E5StudioError, ModelError


class BatchObserver(Protocol):
    def batch_done(self, items: int, tokens: int, compute_s: float) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def queue_depth(self, depth: int) -> None: ...


@dataclass(eq=False)
class _Job:
    sequences: Sequence[np.ndarray]
    tokens: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False

    def resolve(self, rows: np.ndarray | None, error: BaseException | None) -> None:
        def apply() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(rows)  # type: ignore[arg-type]

        # RuntimeError: the caller's event loop is closed, so nobody is waiting for this answer
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(apply)


class Batcher:
    """Token-budget dynamic batching in front of ``embed_ids`` (one worker thread)."""

    def __init__(self, embed_ids: Callable[[Sequence[np.ndarray]], np.ndarray], *, max_batch_tokens: int = 8192,
                 max_queue: int = 256, observer: BatchObserver | None = None, name: str = "engine") -> None:
        self._embed_ids = embed_ids
        self.max_batch_tokens = max_batch_tokens
        self.max_queue = max_queue
        self._observer = observer
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"e5studio-batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(self, sequences: Sequence[np.ndarray],
                     disconnected: Callable[[], Awaitable[None]] | None = None) -> np.ndarray:
        """Rows for ``sequences`` (float32 [n, dim], same order). ``disconnected`` is awaited alongside: if it
        finishes first the request is dropped before compute and ClientGone is raised."""
        loop = asyncio.get_running_loop()
        job = _Job(sequences, sum(len(s) for s in sequences), loop, loop.create_future())
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                raise ModelError("the engine worker is shut down")
            if len(self._queue) >= self.max_queue:
                raise CapacityError(f"server busy: {len(self._queue)} requests queued for this model; retry later")
            self._queue.append(job)
            self._report_depth()
            self._cond.notify()
        watcher = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        try:
            if watcher is None:
                return await job.future
            pending: list[asyncio.Future[Any]] = [job.future, watcher]
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if job.future in done:
                return job.future.result()
            raise ClientGone("client disconnected before its request was computed")
        finally:
            if watcher is not None:
                watcher.cancel()
            if not job.future.done():
                job.cancelled = True  # the worker skips it

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish every queued request, then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _report_depth(self) -> None:
        if self._observer is not None:
            self._observer.queue_depth(len(self._queue))

    def _take_batch(self) -> list[_Job] | None:
        """Block for work; return the queued jobs that fit the token budget (at least one), or None to stop."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            batch: list[_Job] = []
            tokens = 0
            while self._queue:
                job = self._queue[0]
                if job.cancelled:
                    self._queue.popleft()
                    continue
                if batch and tokens + job.tokens > self.max_batch_tokens:
                    break
                batch.append(self._queue.popleft())
                tokens += job.tokens
            self._report_depth()
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            batch = [job for job in batch if not job.cancelled]
            if not batch:
                continue
            started = time.perf_counter()
            if self._observer is not None:
                for job in batch:
                    self._observer.queue_wait(started - job.enqueued)
            sequences = [s for job in batch for s in job.sequences]
            try:
                rows = self._embed_ids(sequences)
            except BaseException as exc:  # noqa: BLE001 - every request of the batch must get an answer
                error = exc if isinstance(exc, E5StudioError) else ModelError(f"inference failed: {exc!r}")
                for job in batch:
                    job.resolve(None, error)
                continue
            if self._observer is not None:
                self._observer.batch_done(len(sequences), sum(j.tokens for j in batch),
                                          time.perf_counter() - started)
            offset = 0
            for job in batch:
                n = len(job.sequences)
                job.resolve(rows[offset:offset + n], None)
                offset += n
