"""Dynamic batching: many requests, one engine worker per loaded model.

Admission comes first: :meth:`Batcher.reserve` decides, before a request is tokenised, whether it may wait
here, from the requests and tokens queued (its own tokens estimated from its characters) and the expected
wait at the measured tokens/s; full -> CapacityError (HTTP 429 with Retry-After). Admitted requests are
tokenised in the request path and queued here as token-id arrays. One worker thread takes every queued
request that fits in the token budget (what piled up while the previous batch computed), drops those whose
client left, runs them as one engine call and hands each request its own rows. Every accepted request ends
with its rows or an error, also when a batch crashes; the worker survives any exception of the engine.

Gathering adapts to the clients: when fewer requests are queued than the previous batch carried (its clients
are sending their next ones), the worker waits for them, at most ``GATHER_S`` and a quarter of the previous
batch's compute time, and stops waiting as soon as as many are queued. A lone client's request (the previous
batch carried one) never waits; a client that left costs the others one bounded wait.
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

from e5studio.control.priority import COMPUTE_NICE, lower_priority
from e5studio.errors import CapacityError, ClientGone, E5StudioError, ModelError, UnavailableError


class BatchObserver(Protocol):
    def batch_done(self, items: int, tokens: int, compute_s: float) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def queue_depth(self, depth: int) -> None: ...


@dataclass(frozen=True)
class QueueLimits:
    """What one model's queue holds before new requests get HTTP 429: requests, tokens, and the expected wait
    (queued tokens at the measured tokens/s; unbounded until a batch has been measured)."""

    max_requests: int = 256
    max_tokens: int = 256 * 1024
    max_wait_s: float = 10.0


GATHER_S = 0.004  # the longest the worker waits for the requests the previous batch's clients are sending
CHARS_PER_TOKEN_ESTIMATE = 3  # fewer than any script's average: the estimate errs on the high side


def estimate_tokens(texts: Sequence[str], max_length: int) -> int:
    """The tokens ``texts`` will have at most about, from their lengths (before tokenising)."""
    return sum(min(max_length, len(t) // CHARS_PER_TOKEN_ESTIMATE + 2) for t in texts)


class Reservation:
    """A place in the queue held while the request is tokenised; released unless submitted."""

    def __init__(self, batcher: Batcher, tokens: int) -> None:
        self._batcher = batcher
        self.tokens = tokens
        self.active = True

    def release(self) -> None:
        self._batcher._release(self)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


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
                 limits: QueueLimits = QueueLimits(), observer: BatchObserver | None = None,
                 name: str = "engine", compute_nice: int = COMPUTE_NICE, gather_s: float = GATHER_S) -> None:
        self._embed_ids = embed_ids
        self.max_batch_tokens = max_batch_tokens
        self.limits = limits
        self._observer = observer
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_tokens = 0  # of the queue and of the reservations
        self._reserved = 0
        self._tokens_per_s: float | None = None  # measured on the batches computed so far
        self._cond = threading.Condition()
        self._stopping = False
        self._compute_nice = compute_nice
        self._gather_s = gather_s
        self._last_batch = (0, 0.0)  # requests the previous batch carried, its compute seconds
        self._thread = threading.Thread(target=self._run, name=f"e5studio-batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def reserve(self, estimated_tokens: int) -> Reservation:
        """A place for a request of about ``estimated_tokens``, or CapacityError (with the expected wait as
        Retry-After) when the queue is full by requests, by tokens or by expected wait. Costs no tokenising:
        an overloaded server says no in microseconds."""
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                raise UnavailableError("the engine worker is shut down (the server is stopping)")
            waiting = len(self._queue) + self._reserved
            tokens = self._queued_tokens + estimated_tokens
            wait_s = tokens / self._tokens_per_s if self._tokens_per_s else 0.0
            limits = self.limits
            if waiting >= limits.max_requests:
                reason = f"{waiting} requests queued for this model"
            elif waiting and tokens > limits.max_tokens:
                reason = f"{self._queued_tokens} tokens queued for this model"
            elif waiting and wait_s > limits.max_wait_s:
                reason = f"the expected wait is {wait_s:.1f} s (limit {limits.max_wait_s:g} s)"
            else:
                self._reserved += 1
                self._queued_tokens += estimated_tokens
                return Reservation(self, estimated_tokens)
        raise CapacityError(f"server busy: {reason}; retry later", retry_after_s=max(1.0, wait_s))

    def calibrate(self, sequences: int = 8, length: int = 128) -> float:
        """Time one engine call on ``sequences`` dummy sequences of ``length`` ids, so that the expected-wait
        bound holds from the first request (before that it knows no tokens/s). Returns the tokens/s; a small
        batch underestimates the throughput, which errs on the side of shedding."""
        batch = [np.zeros(length, dtype=np.int64) for _ in range(sequences)]
        started = time.perf_counter()
        self._embed_ids(batch)
        elapsed = time.perf_counter() - started
        with self._cond:
            if self._tokens_per_s is None and elapsed > 0:
                self._tokens_per_s = sequences * length / elapsed
            return self._tokens_per_s or 0.0

    def _release(self, reservation: Reservation) -> None:
        with self._cond:
            if reservation.active:
                reservation.active = False
                self._reserved -= 1
                self._queued_tokens -= reservation.tokens

    async def submit(self, sequences: Sequence[np.ndarray],
                     disconnected: Callable[[], Awaitable[None]] | None = None,
                     reservation: Reservation | None = None) -> np.ndarray:
        """Rows for ``sequences`` (float32 [n, dim], same order), in the place of ``reservation`` (or a new
        one). ``disconnected`` is awaited alongside: if it finishes first the request is dropped before compute
        and ClientGone is raised."""
        loop = asyncio.get_running_loop()
        job = _Job(sequences, sum(len(s) for s in sequences), loop, loop.create_future())
        if reservation is None:
            reservation = self.reserve(job.tokens)
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                raise UnavailableError("the engine worker is shut down (the server is stopping)")
            if reservation.active:  # the place held becomes the job's, at its real size
                reservation.active = False
                self._reserved -= 1
                self._queued_tokens -= reservation.tokens
            self._queued_tokens += job.tokens
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
            expected, compute_s = self._last_batch
            if len(self._queue) < expected and not self._stopping:
                deadline = time.perf_counter() + min(self._gather_s, compute_s / 4)
                while len(self._queue) < expected and not self._stopping:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            batch: list[_Job] = []
            tokens = 0
            while self._queue:
                job = self._queue[0]
                if job.cancelled:
                    self._queue.popleft()
                    self._queued_tokens -= job.tokens
                    continue
                if batch and tokens + job.tokens > self.max_batch_tokens:
                    break
                batch.append(self._queue.popleft())
                self._queued_tokens -= job.tokens
                tokens += job.tokens
            self._report_depth()
            return batch

    def _run(self) -> None:
        # the engine computes here and on the worker threads it starts from here: below the event loop
        lower_priority(threading.get_native_id(), self._compute_nice)
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
            compute_s = time.perf_counter() - started
            self._last_batch = (len(batch), compute_s)
            tokens = sum(j.tokens for j in batch)
            if compute_s > 0:
                rate = tokens / compute_s
                self._tokens_per_s = rate if self._tokens_per_s is None else 0.8 * self._tokens_per_s + 0.2 * rate
            if self._observer is not None:
                self._observer.batch_done(len(sequences), tokens, compute_s)
            offset = 0
            for job in batch:
                n = len(job.sequences)
                job.resolve(rows[offset:offset + n], None)
                offset += n
