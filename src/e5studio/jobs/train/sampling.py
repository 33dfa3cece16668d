"""Training groups, sampled deterministically.

Each step takes ``batch_size`` queries, and for each a group of ``train_n_passages`` doc ids (the positive
first, then negatives). Everything is a pure function of (seed, epoch, position), so a resumed run or
another process computes the same batches: the query order is a permutation drawn from ``(seed, epoch)``;
the positive rotates over a query's positives from epoch to epoch; the negatives are a window that moves by
``train_n_passages - 1`` every epoch; a query with too few negatives is filled up with random passages that
are none of its positives or negatives, drawn from ``(seed, epoch, query)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from e5studio.errors import InputError
from e5studio.jobs.train.passages import TrainData


@dataclass(frozen=True)
class Group:
    """One query's training group: ``doc_ids[0]`` is the positive, the rest negatives."""

    example: int
    query: str
    doc_ids: tuple[int, ...]
    positives: frozenset[int]  # doc ids that count as positives of this query (for false-negative masking)


class GroupSampler:
    """Deterministic global batches of groups: a pure function of (seed, epoch, step)."""

    def __init__(self, data: TrainData, batch_size: int, train_n_passages: int, seed: int) -> None:
        if batch_size < 1 or train_n_passages < 1:
            raise InputError("batch_size and train_n_passages must be at least 1")
        if len(data.examples) < batch_size:
            raise InputError(f"the dataset has {len(data.examples)} queries, fewer than one batch of {batch_size}; "
                             "lower --batch-size")
        self.data = data
        self.batch_size = batch_size
        self.train_n_passages = train_n_passages
        self.seed = seed
        n = len(data.passages)
        for ex, positives in zip(data.examples, data.query_positives, strict=True):
            available = n - len(positives)
            if available < train_n_passages - 1:
                raise InputError(f"train.jsonl:{ex.line}: the corpus has only {available} passages that can be "
                                 f"negatives of this query, fewer than train_n_passages - 1 = {train_n_passages - 1}")

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per epoch (the last partial batch is dropped, so every step has the same shape)."""
        return len(self.data.examples) // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        """The example order of ``epoch``: a permutation drawn from (seed, epoch)."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.data.examples))

    def batch(self, epoch: int, step: int) -> list[Group]:
        """The global batch ``step`` (0-based within the epoch) of ``epoch`` (0-based)."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} is outside epoch of {self.steps_per_epoch} steps")
        picked = self.order(epoch)[step * self.batch_size:(step + 1) * self.batch_size]
        return [self.group(int(i), epoch) for i in picked]

    def group(self, index: int, epoch: int) -> Group:
        ex = self.data.examples[index]
        offset = self.seed + index
        positive = ex.positives[(offset + epoch) % len(ex.positives)]
        needed = self.train_n_passages - 1
        negatives = ex.negatives
        if len(negatives) >= needed:
            start = (offset % len(negatives) + epoch * needed) % len(negatives)
            chosen = [negatives[(start + j) % len(negatives)] for j in range(needed)]
        else:
            chosen = list(negatives) + self._fill(index, epoch, needed - len(negatives), set(ex.positives) | set(
                negatives) | self.data.query_positives[index])
        return Group(index, ex.query, (positive, *chosen), self.data.query_positives[index])

    def _fill(self, index: int, epoch: int, count: int, excluded: set[int]) -> list[int]:
        """``count`` distinct random doc ids outside ``excluded``, from (seed, epoch, index)."""
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        n = len(self.data.passages)
        picked: list[int] = []
        taken = set(excluded)
        if n - len(taken) < count:  # tiny corpus: take what there is, in a seeded order
            rest = [i for i in rng.permutation(n).tolist() if i not in taken]
            return (rest * count)[:count] if rest else []
        while len(picked) < count:
            doc = int(rng.integers(n))
            if doc not in taken:
                taken.add(doc)
                picked.append(doc)
        return picked
