"""Reading a validated fine-tuning dataset for training: passages by doc id (byte offsets only), examples,
and each query's merged positives."""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from e5studio.errors import InputError
from e5studio.jobspec.dataset_format import TrainExample, check_passage, decode_line, parse_train_line, read_lines
from e5studio.jobspec.layout import PASSAGES_FILE, TRAIN_FILE


class PassageStore:
    """Random access to passages.jsonl by doc id, keeping only the byte offset of each line in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        offsets = [0]
        with path.open("rb") as f:
            for raw in f:
                offsets.append(offsets[-1] + len(raw))
        self._offsets = np.asarray(offsets, dtype=np.int64)  # [n + 1]
        self._file = path.open("rb")
        size = int(self._offsets[-1])
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def text(self, doc_id: int) -> str:
        if not 0 <= doc_id < len(self) or self._map is None:
            raise InputError(f"{self.path}: doc id {doc_id} is out of range (0 to {len(self) - 1})")
        raw = self._map[int(self._offsets[doc_id]):int(self._offsets[doc_id + 1])]
        obj, problem = decode_line(raw.rstrip(b"\r\n"))
        problem = problem or check_passage(obj)
        if problem:
            raise InputError(f"{self.path}:{doc_id + 1}: {problem}; validate the dataset first")
        return str(obj["contents"])

    def texts(self, doc_ids: Sequence[int]) -> list[str]:
        return [self.text(int(i)) for i in doc_ids]

    def __iter__(self) -> Iterator[str]:
        for doc_id in range(len(self)):
            yield self.text(doc_id)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        self._file.close()


def read_examples(path: Path, n_passages: int) -> list[TrainExample]:
    """Every valid example of train.jsonl; the first bad line raises InputError (validate first)."""
    examples: list[TrainExample] = []
    for number, raw in read_lines(path, hashlib.sha256()):
        if not raw.strip():
            continue
        obj, problem = decode_line(raw)
        example, errors, _ = (None, [problem], []) if problem else parse_train_line(obj, n_passages, number)
        if example is None:
            raise InputError(f"{path}:{number}: {errors[0]}; run `e5studio datasets validate` for every problem")
        examples.append(example)
    if not examples:
        raise InputError(f"{path}: no training queries")
    return examples


@dataclass
class TrainData:
    """A dataset ready for sampling: passages by doc id, examples, and each query's merged positives."""

    passages: PassageStore
    examples: list[TrainExample]
    query_positives: list[frozenset[int]]  # per example: positives of every line with the same query text

    @classmethod
    def load(cls, directory: Path) -> TrainData:
        passages = PassageStore(directory / PASSAGES_FILE)
        examples = read_examples(directory / TRAIN_FILE, len(passages))
        merged: dict[str, set[int]] = {}
        for ex in examples:
            merged.setdefault(ex.query, set()).update(ex.positives)
        return cls(passages, examples, [frozenset(merged[ex.query]) for ex in examples])


