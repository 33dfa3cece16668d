"""An exact search index on disk: one float32 matrix (``vectors.npy``, memory-mapped) and its ids.

Layout of an index folder::

    index.json    {"kind": "exact", "metric": "inner_product", "count": n, "dim": d}
    vectors.npy   float32 [n, d], unit rows (inner product = cosine)
    ids.jsonl     one JSON string per line, row i = id of vector i

It is built by streaming (id, vector) chunks into a memory-mapped file, so building needs no more memory
than one chunk; it is written under a temporary name and renamed, so a folder named ``index`` is complete.
Search is :func:`e5studio.retrieval.search.exact_search` over the memory-mapped matrix.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from e5studio.errors import InputError
from e5studio.retrieval.search import exact_search

META = "index.json"
VECTORS = "vectors.npy"
IDS = "ids.jsonl"


@dataclass(frozen=True)
class Hit:
    id: str
    score: float


class ExactIndex:
    """Brute-force inner-product search over all vectors (exact; no recall loss)."""

    def __init__(self, directory: Path, ids: list[str], vectors: np.ndarray) -> None:
        self.directory = directory
        self.ids = ids
        self.vectors = vectors  # [n, d] float32, usually a read-only memmap

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(cls, directory: Path, count: int, dim: int,
              chunks: Iterable[tuple[Sequence[str], np.ndarray]]) -> ExactIndex:
        """Write ``count`` vectors of ``dim`` from (ids, vectors [m, dim]) chunks into ``directory``."""
        tmp = directory.with_name(f".tmp-{directory.name}.{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        matrix = np.lib.format.open_memmap(tmp / VECTORS, mode="w+", dtype=np.float32, shape=(count, dim))
        row = 0
        with (tmp / IDS).open("w", encoding="utf-8") as ids_file:
            for ids, vectors in chunks:
                if vectors.shape != (len(ids), dim) or row + len(ids) > count:
                    raise ValueError(f"index chunk of shape {vectors.shape} with {len(ids)} ids at row {row} "
                                     f"does not fit [{count}, {dim}]")
                matrix[row:row + len(ids)] = vectors
                ids_file.writelines(json.dumps(i) + "\n" for i in ids)
                row += len(ids)
        if row != count:
            raise ValueError(f"index: got {row} vectors, expected {count}")
        matrix.flush()
        del matrix
        (tmp / META).write_text(json.dumps({"kind": "exact", "metric": "inner_product", "count": count,
                                            "dim": dim}) + "\n")
        if directory.exists():
            old = directory.with_name(f".old-{directory.name}.{os.getpid()}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
        return cls.open(directory)

    @classmethod
    def open(cls, directory: Path) -> ExactIndex:
        try:
            meta = json.loads((directory / META).read_text())
        except (OSError, ValueError):
            raise InputError(f"{directory}: no search index ({META} missing or unreadable)") from None
        vectors = np.load(directory / VECTORS, mmap_mode="r")
        with (directory / IDS).open(encoding="utf-8") as f:
            ids = [json.loads(line) for line in f]
        if vectors.shape != (meta["count"], meta["dim"]) or len(ids) != meta["count"]:
            raise InputError(f"{directory}: index files disagree ({vectors.shape}, {len(ids)} ids, {meta})")
        return cls(directory, ids, vectors)

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` hits for each query row [q, d], best first."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InputError(f"query vectors have dimension {queries.shape[-1]}, the index has {self.dim}")
        if len(self) == 0:
            return [[] for _ in range(queries.shape[0])]
        scores, indices = exact_search(np.asarray(queries, dtype=np.float32), self.vectors, k)
        return [[Hit(self.ids[int(j)], float(s)) for s, j in zip(srow, irow, strict=True)]
                for srow, irow in zip(scores, indices, strict=True)]
