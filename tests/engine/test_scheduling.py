"""The Embedder's scheduling: micro-batches one per core against one after another (same rows, same order),
thread counts of workers and callers, failures."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from e5studio.engine.embedder import Embedder, micro_batches
from e5studio.engine.runtimes import Runtime, RuntimePlan
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


def _with(embedder: Embedder, plan: RuntimePlan, budget: int, workers: int, threads: int) -> Embedder:
    return Embedder(embedder.checkpoint, embedder.tokenizer, embedder.encoder, plan, budget, workers, threads)


@pytest.mark.usefixtures("restore_threads")
def test_workers_give_the_rows_of_one_thread_in_input_order(minilm_embedder: Embedder, mixed_texts: list[str]) -> None:
    # every length of mixed_texts, with every other of its 40 whole passages (the costly rows: each is embedded
    # five times below)
    ids = minilm_embedder.tokenize(mixed_texts[:3] + mixed_texts[3:43:2] + mixed_texts[43:])
    budget = 1024
    assert len(list(micro_batches([len(s) for s in ids], budget))) > 4
    large_only = RuntimePlan(minilm_embedder.plan.large)  # what the workers run

    torch.set_num_threads(1)  # one after another on one thread: the arithmetic of each worker
    in_order = _with(minilm_embedder, large_only, budget, 1, 1).embed_ids(ids)
    torch.set_num_threads(2)
    two = _with(minilm_embedder, minilm_embedder.plan, budget, 2, 2).embed_ids(ids)
    three = _with(minilm_embedder, minilm_embedder.plan, budget, 3, 3).embed_ids(ids)

    np.testing.assert_array_equal(two, in_order)  # each micro-batch is computed whole by one single-threaded worker
    np.testing.assert_array_equal(three, in_order)
    np.testing.assert_allclose(minilm_embedder.embed_ids(ids), in_order, rtol=0, atol=1e-5)
    assert np.abs(in_order[0] - in_order[1]).max() > 1e-2  # distinct rows: a mix-up would show
    alone = np.stack([minilm_embedder.embed_ids([s])[0] for s in ids[:5]])
    np.testing.assert_allclose(two[:5], alone, rtol=0, atol=1e-5)


class _Spy:
    """A runtime that records which thread ran it with how many torch threads, then runs the real one."""

    name = "spy"

    def __init__(self, real: Runtime, fail_on_rows: int | None = None) -> None:
        self.real = real
        self.fail_on_rows = fail_on_rows
        self.seen: list[tuple[str, int, int]] = []
        self.finished: list[int] = []

    def rows(self, sequences: list[np.ndarray]) -> np.ndarray:
        rows = len(sequences)
        self.seen.append((threading.current_thread().name, torch.get_num_threads(), rows))
        if rows == self.fail_on_rows:
            raise RuntimeError(f"micro-batch of {rows} failed")
        time.sleep(0.05)  # every worker gets a share
        self.finished.append(rows)
        return self.real.rows(sequences)


@pytest.mark.usefixtures("restore_threads")
def test_worker_and_caller_thread_counts(tiny_dir: Path) -> None:
    torch.set_num_threads(2)
    base = Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu"))
    spy = _Spy(base.plan.large)
    embedder = _with(base, RuntimePlan(spy), 8, 2, 2)
    ids = [np.array([101, 7, 102])] * 2 + [np.array([101, 7, 8, 102])] * 2 + [np.array([101, 102])] * 4

    embedder.embed_ids(ids)  # 4 micro-batches
    assert {threads for _, threads, _ in spy.seen} == {1}
    assert all(name.startswith("e5studio-compute") for name, _, _ in spy.seen)
    assert torch.get_num_threads() == 2  # the caller keeps its threads
    started_later: list[int] = []
    thread = threading.Thread(target=lambda: started_later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert started_later == [2]  # torch's default for new threads is the process's again

    spy.seen.clear()
    embedder.embed_ids(ids[:2])  # one micro-batch: in the calling thread, on all its threads
    assert spy.seen == [(threading.current_thread().name, 2, 2)]


def test_a_failing_micro_batch_fails_the_call_after_all_have_finished(tiny_dir: Path) -> None:
    base = Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu"))
    spy = _Spy(base.plan.large, fail_on_rows=1)
    embedder = _with(base, RuntimePlan(spy), 6, 2, 2)
    ids = [np.array([101, 7, 8, 9, 10, 102]), np.array([101, 7, 102]), np.array([101, 7, 102]),
           np.array([101, 102]), np.array([101, 102]), np.array([101, 102])]
    assert [len(b) for b in micro_batches([len(s) for s in ids], 6)] == [1, 2, 3]

    with pytest.raises(RuntimeError, match="micro-batch of 1 failed"):
        embedder.embed_ids(ids)
    assert sorted(spy.finished) == [2, 3]  # nothing still running after the call returned


@pytest.mark.usefixtures("restore_threads")
def test_load_reads_the_thread_setting_and_never_changes_it(tiny_dir: Path) -> None:
    torch.set_num_threads(2)

    def load(threads: int | None, workers: int | None = None) -> Embedder:
        return Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", threads=threads), workers=workers)

    assert (load(None).workers, load(None).threads) == (2, 2)
    assert load(1).workers == 1
    assert load(2, workers=1).workers == 1
    assert load(2, workers=4).workers == 4
    assert torch.get_num_threads() == 2  # library code never sets the process's threads
    with pytest.raises(ValueError, match="workers"):
        load(2, workers=0)
