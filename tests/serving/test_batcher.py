"""The dynamic batcher in-process, with a fake ``embed_ids`` that records what it computed.

Each fake row is ``[first token id, length]`` so a row says which sequence it came from. A gate (threading
Event) holds the worker inside a batch so that the tests can decide what is queued behind it. Every await
has a timeout: a request left hanging is exactly the failure these tests look for.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest

from e5studio.control.priority import COMPUTE_NICE
from e5studio.errors import CapacityError, ClientGone, InputError, ModelError, UnavailableError
from e5studio.serving.batcher import Batcher, QueueLimits

T = TypeVar("T")
WAIT_S = 10.0


def seq(ident: int, length: int = 3) -> np.ndarray:
    """A fake token-id sequence whose first id identifies it."""
    return np.asarray([ident] + [0] * (length - 1), dtype=np.int64)


def expected_rows(sequences: Sequence[np.ndarray]) -> np.ndarray:
    return np.asarray([[s[0], len(s)] for s in sequences], dtype=np.float32)


class FakeEngine:
    """``embed_ids`` that records every call, may hold on a gate, and fails on a marked sequence id."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None,
                 error: BaseException | None = None) -> None:
        self.calls: list[list[int]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.error = error
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def hold(self) -> None:
        """The next batch waits inside embed_ids until release()."""
        self.entered.clear()
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def seen(self) -> set[int]:
        return {ident for call in self.calls for ident in call}

    def __call__(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        with self._lock:
            self.calls.append([int(s[0]) for s in sequences])
        self.entered.set()
        assert self.gate.wait(WAIT_S), "test never released the gate"
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and any(int(s[0]) == self.fail_on for s in sequences):
            raise self.error or RuntimeError("boom")
        return expected_rows(sequences)


class Recorder:
    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []
        self.waits: list[float] = []
        self.depths: list[int] = []

    def batch_done(self, items: int, tokens: int, compute_s: float) -> None:
        self.batches.append((items, tokens))

    def queue_wait(self, seconds: float) -> None:
        self.waits.append(seconds)

    def queue_depth(self, depth: int) -> None:
        self.depths.append(depth)


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), 30)

    return asyncio.run(bounded())


async def until(predicate: Callable[[], bool]) -> None:
    """Let the loop and the worker thread run until ``predicate`` holds."""
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.001)


async def worker_inside(engine: FakeEngine) -> None:
    assert await asyncio.to_thread(engine.entered.wait, WAIT_S)


def test_rows_go_back_to_the_right_requests_in_order() -> None:
    engine = FakeEngine(delay=0.01)
    recorder = Recorder()
    batcher = Batcher(engine, max_batch_tokens=10_000, observer=recorder)
    requests = [[seq(1000 * r + j, length=1 + (r + j) % 5) for j in range(r % 4 + 1)] for r in range(60)]

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.submit(s) for s in requests))

    results = run(main)
    batcher.close()
    for sequences, rows in zip(requests, results, strict=True):
        assert rows.dtype == np.float32
        np.testing.assert_array_equal(rows, expected_rows(sequences))
    assert sorted(engine.seen()) == sorted(int(s[0]) for r in requests for s in r), "each sequence computed once"
    assert sum(len(c) for c in engine.calls) == sum(len(r) for r in requests)
    assert max(len(c) for c in engine.calls) > 4, "requests that queued up together are batched together"
    assert sum(items for items, _ in recorder.batches) == sum(len(r) for r in requests)
    assert len(recorder.waits) == len(requests) and min(recorder.waits) >= 0


def test_many_threads_with_their_own_event_loops() -> None:
    """Requests from several event loops (threads) at once still each get their own rows."""
    engine = FakeEngine(delay=0.002)
    batcher = Batcher(engine, max_batch_tokens=10_000)
    failures: list[BaseException] = []

    def client(c: int) -> None:
        async def main() -> None:
            for r in range(10):
                sequences = [seq(c * 100_000 + r * 10 + j) for j in range(r % 3 + 1)]
                rows = await batcher.submit(sequences)
                np.testing.assert_array_equal(rows, expected_rows(sequences))

        try:
            run(main)
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised in the test thread
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    batcher.close()
    assert not failures, failures


def test_token_budget_splits_batches() -> None:
    engine = FakeEngine()
    batcher = Batcher(engine, max_batch_tokens=10)

    async def main() -> None:
        engine.hold()
        first = asyncio.ensure_future(batcher.submit([seq(1, 4)]))
        await worker_inside(engine)
        rest = [asyncio.ensure_future(batcher.submit([seq(i, 4)])) for i in range(2, 8)]
        await until(lambda: batcher.depth == 6)
        engine.release()
        await asyncio.gather(first, *rest)

    run(main)
    batcher.close()
    assert engine.calls[0] == [1]
    assert all(sum(4 for _ in call) <= 10 for call in engine.calls[1:]), engine.calls
    assert [i for call in engine.calls for i in call] == list(range(1, 8)), "queue order is kept"


def test_a_crash_fails_every_request_of_its_batch_and_the_worker_survives() -> None:
    engine = FakeEngine(fail_on=666)
    batcher = Batcher(engine, max_batch_tokens=10_000)

    async def main() -> None:
        engine.hold()
        first = asyncio.ensure_future(batcher.submit([seq(1)]))
        await worker_inside(engine)
        crash = asyncio.ensure_future(batcher.submit([seq(2), seq(666)]))
        bystander = asyncio.ensure_future(batcher.submit([seq(3)]))
        await until(lambda: batcher.depth == 2)
        engine.release()
        np.testing.assert_array_equal(await first, expected_rows([seq(1)]))
        for victim in (crash, bystander):
            with pytest.raises(ModelError, match=r"inference failed: RuntimeError\('boom'\)"):
                await victim
        assert engine.calls[1] == [2, 666, 3], "the crashing batch held both requests"
        after = await batcher.submit([seq(4), seq(5)])
        np.testing.assert_array_equal(after, expected_rows([seq(4), seq(5)]))

    run(main)
    batcher.close()


@pytest.mark.parametrize(("error", "raised", "message"), [
    (InputError("sequence too long for this backend"), InputError, "sequence too long"),  # ours: unchanged
    (SystemExit(3), ModelError, "SystemExit"),  # even a BaseException does not kill the worker
])
def test_an_engine_failure_reaches_the_caller_and_the_worker_survives(
        error: BaseException, raised: type[Exception], message: str) -> None:
    engine = FakeEngine(fail_on=7, error=error)
    batcher = Batcher(engine)

    async def main() -> None:
        with pytest.raises(raised, match=message):
            await batcher.submit([seq(7)])
        np.testing.assert_array_equal(await batcher.submit([seq(8)]), expected_rows([seq(8)]))

    run(main)
    batcher.close()


def test_full_queue_raises_capacity_error_and_accepted_requests_finish() -> None:
    engine = FakeEngine()
    batcher = Batcher(engine, limits=QueueLimits(max_requests=2))

    async def main() -> None:
        engine.hold()
        running = asyncio.ensure_future(batcher.submit([seq(1)]))
        await worker_inside(engine)
        queued = [asyncio.ensure_future(batcher.submit([seq(i)])) for i in (2, 3)]
        await until(lambda: batcher.depth == 2)
        with pytest.raises(CapacityError, match="busy"):
            await batcher.submit([seq(4)])
        engine.release()
        for i, task in zip((1, 2, 3), (running, *queued), strict=True):
            np.testing.assert_array_equal(await task, expected_rows([seq(i)]))
        np.testing.assert_array_equal(await batcher.submit([seq(5)]), expected_rows([seq(5)]))

    run(main)
    batcher.close()
    assert 4 not in engine.seen(), "the refused request was never computed"


def test_a_request_whose_client_left_is_never_computed() -> None:
    engine = FakeEngine()
    batcher = Batcher(engine)

    async def main() -> None:
        engine.hold()
        running = asyncio.ensure_future(batcher.submit([seq(1)]))
        await worker_inside(engine)
        gone = asyncio.Event()

        async def disconnected() -> None:
            await gone.wait()

        leaving = asyncio.ensure_future(batcher.submit([seq(42), seq(43)], disconnected=disconnected))
        staying = asyncio.ensure_future(batcher.submit([seq(2)], disconnected=lambda: asyncio.Event().wait()))
        await until(lambda: batcher.depth == 2)
        gone.set()
        with pytest.raises(ClientGone):
            await leaving
        engine.release()
        np.testing.assert_array_equal(await running, expected_rows([seq(1)]))
        np.testing.assert_array_equal(await staying, expected_rows([seq(2)]))
        np.testing.assert_array_equal(await batcher.submit([seq(3)]), expected_rows([seq(3)]))

    run(main)
    batcher.close()
    assert not {42, 43} & engine.seen(), engine.calls


def test_client_gone_when_every_queued_request_left() -> None:
    """A batch made only of requests whose clients left computes nothing; the worker goes on."""
    engine = FakeEngine()
    batcher = Batcher(engine)

    async def main() -> None:
        engine.hold()
        running = asyncio.ensure_future(batcher.submit([seq(1)]))
        await worker_inside(engine)

        async def left() -> None:
            return None

        for ident in (50, 51, 52):
            with pytest.raises(ClientGone):
                await batcher.submit([seq(ident)], disconnected=left)
        engine.release()
        await running
        np.testing.assert_array_equal(await batcher.submit([seq(2)]), expected_rows([seq(2)]))

    run(main)
    batcher.close()
    assert engine.calls == [[1], [2]]


def test_close_finishes_queued_requests_then_refuses_new_ones() -> None:
    engine = FakeEngine()
    batcher = Batcher(engine, max_batch_tokens=6)

    async def main() -> None:
        engine.hold()
        tasks = [asyncio.ensure_future(batcher.submit([seq(1)]))]
        await worker_inside(engine)
        tasks += [asyncio.ensure_future(batcher.submit([seq(i)])) for i in range(2, 10)]
        await until(lambda: batcher.depth == 8)
        closing = asyncio.ensure_future(asyncio.to_thread(batcher.close, WAIT_S))
        await asyncio.sleep(0.05)
        assert not closing.done(), "close waits for the queued requests"
        engine.release()
        results: list[Any] = await asyncio.gather(*tasks)
        await closing
        for i, rows in enumerate(results, start=1):
            np.testing.assert_array_equal(rows, expected_rows([seq(i)]))
        with pytest.raises(UnavailableError, match="shut down"):
            await batcher.submit([seq(99)])

    run(main)
    assert sorted(engine.seen()) == list(range(1, 10))


def test_a_caller_whose_event_loop_closed_does_not_kill_the_worker() -> None:
    """A caller's loop may be gone when its rows are ready (its asyncio.run ended while the batch computed).
    Handing the rows over must not raise inside the worker: the other requests of that batch and every
    later request still get their answers."""
    engine = FakeEngine()
    batcher = Batcher(engine, max_batch_tokens=10_000)
    engine.hold()

    async def impatient() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.submit([seq(1)]), 0.2)  # taken by the worker, then abandoned

    thread = threading.Thread(target=lambda: asyncio.run(impatient()))
    thread.start()
    assert engine.entered.wait(WAIT_S)
    thread.join(WAIT_S)  # its event loop is closed now, its request is inside the worker

    async def patient() -> None:
        waiting = asyncio.ensure_future(batcher.submit([seq(2)]))
        await until(lambda: batcher.depth == 1)
        engine.release()
        try:
            rows = await asyncio.wait_for(waiting, 5)
        except TimeoutError:
            raise AssertionError("a queued request was left hanging: the worker thread died") from None
        np.testing.assert_array_equal(rows, expected_rows([seq(2)]))
        np.testing.assert_array_equal(await batcher.submit([seq(3)]), expected_rows([seq(3)]))

    run(patient)
    batcher.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities are set on Linux")
def test_the_engine_computes_below_the_event_loop() -> None:
    """Under overload the event loop (which answers 429s) gets the CPU before the compute: the batcher thread,
    and the threads the engine starts from it (its compute workers), run COMPUTE_NICE levels lower; the
    caller's thread is left as it was."""
    seen: list[int] = []

    def embed_ids(sequences: Sequence[np.ndarray]) -> np.ndarray:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        worker = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS,
                                                                            threading.get_native_id())))
        worker.start()
        worker.join()
        return expected_rows(sequences)

    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    batcher = Batcher(embed_ids)
    try:
        rows = run(lambda: batcher.submit([seq(7)]))
    finally:
        batcher.close()
    np.testing.assert_array_equal(rows, expected_rows([seq(7)]))
    assert seen == [min(19, own + COMPUTE_NICE)] * 2
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own


def test_requests_of_the_previous_batchs_clients_are_gathered_into_one_batch() -> None:
    engine = FakeEngine(delay=0.2)  # compute 0.2 s: the worker may wait up to a quarter of it (and gather_s)
    batcher = Batcher(engine, max_batch_tokens=10_000, gather_s=0.05)

    async def main() -> None:
        engine.hold()
        first = asyncio.ensure_future(batcher.submit([seq(99)]))
        await worker_inside(engine)
        four = [asyncio.ensure_future(batcher.submit([seq(i)])) for i in range(4)]
        await until(lambda: batcher.depth == 4)
        engine.release()
        await asyncio.gather(first, *four)  # the last batch carried these four
        assert engine.calls[-1] == [0, 1, 2, 3]
        count = len(engine.calls)

        async def later(i: int) -> np.ndarray:
            await asyncio.sleep(0.005 * i)  # the four clients' next requests arrive a few ms apart
            return await batcher.submit([seq(10 + i)])

        await asyncio.gather(*(later(i) for i in range(4)))
        assert engine.calls[count:] == [[10, 11, 12, 13]], engine.calls

    run(main)
    batcher.close()


def test_a_lone_request_never_waits_and_a_client_that_left_costs_one_bounded_wait() -> None:
    engine = FakeEngine(delay=1.0)  # the bound: min(gather_s, 1.0 / 4) = 0.25 s
    recorder = Recorder()
    batcher = Batcher(engine, max_batch_tokens=10_000, gather_s=5.0, observer=recorder)

    async def main() -> None:
        await batcher.submit([seq(1)])
        await batcher.submit([seq(2)])  # after a batch of one: taken at once
        assert recorder.waits[-1] < 0.2, recorder.waits
        engine.hold()
        first = asyncio.ensure_future(batcher.submit([seq(3)]))
        await worker_inside(engine)
        others = [asyncio.ensure_future(batcher.submit([seq(4 + i)])) for i in range(3)]
        await until(lambda: batcher.depth == 3)
        engine.release()
        await asyncio.gather(first, *others)  # the last batch carried three
        await batcher.submit([seq(9)])  # alone now: waits for the two that do not come, then runs
        assert 0.2 <= recorder.waits[-1] < 0.9, recorder.waits

    run(main)
    batcher.close()
