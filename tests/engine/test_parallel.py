"""Micro-batches one per core (PerCore) against one after another (InOrder): same rows, same order, errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from e5studio.engine.embedder import Embedder, micro_batches
from e5studio.engine.parallel import InOrder, PerCore
from e5studio.settings import EngineSettings
from tests.reference import words_text


@pytest.fixture
def restore_threads() -> object:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mixed_texts(scifact_passages: list[str]) -> list[str]:
    """Many texts of very different lengths, in no particular order."""
    return [words_text(scifact_passages, 700), "a", "", *scifact_passages[:40], "query: what is the role of p53?",
            *(p[:120] for p in scifact_passages[40:60])]


@pytest.mark.usefixtures("restore_threads")
def test_per_core_gives_the_rows_of_in_order_in_input_order(minilm_embedder: Embedder, mixed_texts: list[str]) -> None:
    ids = minilm_embedder.tokenize(mixed_texts)
    budget = 1024
    assert len(list(micro_batches([len(s) for s in ids], budget))) > 4

    def embedder(scheduler: InOrder | PerCore) -> Embedder:
        return Embedder(minilm_embedder.checkpoint, minilm_embedder.tokenizer, minilm_embedder.backend, budget,
                        scheduler)

    torch.set_num_threads(1)  # InOrder on one thread: the arithmetic of each PerCore worker
    in_order = embedder(InOrder()).embed_ids(ids)
    torch.set_num_threads(2)
    two = embedder(PerCore(2, 2)).embed_ids(ids)
    three = embedder(PerCore(3, 3)).embed_ids(ids)

    np.testing.assert_array_equal(two, in_order)  # each micro-batch is computed whole by one single-threaded worker
    np.testing.assert_array_equal(three, in_order)
    np.testing.assert_allclose(minilm_embedder.embed_ids(ids), in_order, rtol=0, atol=1e-5)
    assert np.abs(in_order[0] - in_order[1]).max() > 1e-2  # distinct rows: a mix-up would show
    alone = np.stack([minilm_embedder.embed_ids([s])[0] for s in ids[:5]])
    np.testing.assert_allclose(two[:5], alone, rtol=0, atol=1e-5)


@pytest.mark.usefixtures("restore_threads")
def test_worker_and_caller_thread_counts() -> None:
    torch.set_num_threads(2)
    scheduler = PerCore(2, 2)
    seen: dict[int, tuple[str, int]] = {}

    def compute(idx: list[int]) -> None:
        time.sleep(0.02)  # both workers get a share
        seen[idx[0]] = (threading.current_thread().name, torch.get_num_threads())

    scheduler.run(compute, [[0], [1], [2], [3]])
    assert {threads for _, threads in seen.values()} == {1}
    assert all(name.startswith("e5studio-compute") for name, _ in seen.values())
    assert torch.get_num_threads() == 2  # the caller keeps its threads
    started_later: list[int] = []
    thread = threading.Thread(target=lambda: started_later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert started_later == [2]  # torch's default for new threads is put back

    scheduler.run(compute, [[9]])  # one micro-batch: in the calling thread, on all its threads
    assert seen[9] == (threading.current_thread().name, 2)


def test_a_failing_micro_batch_fails_the_call_after_all_have_finished() -> None:
    finished: list[int] = []

    def compute(idx: list[int]) -> None:
        if idx[0] == 1:
            raise RuntimeError("micro-batch 1 failed")
        time.sleep(0.05)
        finished.append(idx[0])

    with pytest.raises(RuntimeError, match="micro-batch 1 failed"):
        PerCore(2, 2).run(compute, [[0], [1], [2], [3]])
    assert sorted(finished) == [0, 2, 3]  # nothing still running after the call returned


def test_per_core_needs_two_workers() -> None:
    with pytest.raises(ValueError, match="2 workers"):
        PerCore(1, 2)


@pytest.mark.usefixtures("restore_threads")
def test_load_picks_the_scheduler(tiny_dir: Path) -> None:
    def scheduler(threads: int, workers: int | None = None) -> InOrder | PerCore:
        settings = EngineSettings(model=str(tiny_dir), device="cpu", threads=threads)
        return Embedder.load(settings, workers=workers).scheduler  # type: ignore[return-value]

    two = scheduler(2)
    assert isinstance(two, PerCore) and (two.workers, two.threads, two.threads_per_worker) == (2, 2, 1)
    assert isinstance(scheduler(1), InOrder)
    assert isinstance(scheduler(2, workers=1), InOrder)
    four = scheduler(2, workers=4)
    assert isinstance(four, PerCore) and (four.workers, four.threads_per_worker) == (4, 1)
    with pytest.raises(ValueError, match="workers"):
        scheduler(2, workers=0)
