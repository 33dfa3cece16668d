"""Hard-negative mining: rank the corpus for every training query and keep top passages that are not positives.

For each query (``query: `` prefix) the whole corpus (``passage: ``) is ranked by exact search with the
given embedder. Positives of the query (of every line with the same query text) are removed from the
ranking, the first ``skip_top`` remaining passages are skipped (the top of the ranking is where unlabelled
positives, i.e. false negatives, concentrate), and the next ``top_k`` become negatives, after any
negatives the line already had. The result is a new ``train.jsonl`` beside the same ``passages.jsonl`` (a hard
link: no second copy of the corpus; dataset files are never symbolic links out of their folder), so doc ids
keep their meaning.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from e5studio.engine.embedder import Embedder
from e5studio.errors import InputError
from e5studio.jobs.train.passages import PassageStore, read_examples
from e5studio.jobspec.layout import PASSAGES_FILE, TRAIN_FILE
from e5studio.retrieval.evaluate import PhaseProgress
from e5studio.retrieval.search import exact_search

CHUNK = 4096  # passages embedded per call (bounds the texts held at once)


@dataclass(frozen=True)
class MiningResult:
    directory: Path
    queries: int
    negatives_added: int


def embed_corpus(embedder: Embedder, passages: PassageStore, progress: PhaseProgress | None = None) -> np.ndarray:
    """float32 [n, d] passage embeddings, embedded in chunks of :data:`CHUNK`; ``progress("passages", done,
    total)`` after every micro-batch."""
    out = np.empty((len(passages), embedder.dim), dtype=np.float32)
    for start in range(0, len(passages), CHUNK):
        ids = range(start, min(start + CHUNK, len(passages)))

        def done(rows: int, start: int = start) -> None:
            if progress is not None:
                progress("passages", start + rows, len(passages))

        out[start:ids.stop] = embedder.embed_ids(embedder.tokenize(passages.texts(ids), "passage"), done)
    return out


def mine_negatives(source: Path, destination: Path, embedder: Embedder, top_k: int, skip_top: int = 3,
                   progress: PhaseProgress | None = None) -> MiningResult:
    """Write ``destination/train.jsonl`` with mined negatives and link ``destination/passages.jsonl``."""
    if top_k < 1 or skip_top < 0:
        raise InputError("--top-k must be at least 1 and --skip-top at least 0")
    passages = PassageStore(source / PASSAGES_FILE)
    try:
        examples = read_examples(source / TRAIN_FILE, len(passages))
        merged: dict[str, set[int]] = {}
        for ex in examples:
            merged.setdefault(ex.query, set()).update(ex.positives)
        corpus = embed_corpus(embedder, passages, progress)  # [n, d]
    finally:
        passages.close()
    texts = list(merged)
    queries = embedder.embed_ids(embedder.tokenize(texts, "query"),  # [q, d]
                                 lambda rows: progress("queries", rows, len(texts)) if progress else None)
    if progress is not None:
        progress("ranking", 0, len(texts))
    depth = min(len(corpus), skip_top + top_k + max(len(p) for p in merged.values()))
    _, ranked = exact_search(queries, corpus, depth)  # [q, depth]
    if progress is not None:
        progress("ranking", len(texts), len(texts))
    row_of = {text: row for row, text in enumerate(texts)}
    destination.mkdir(parents=True, exist_ok=True)
    tmp = destination / f".{TRAIN_FILE}.tmp-{os.getpid()}"
    added = 0
    with tmp.open("w", encoding="utf-8") as f:
        for ex in examples:
            positives = merged[ex.query]
            candidates = [int(d) for d in ranked[row_of[ex.query]] if int(d) not in positives]
            mined = [d for d in candidates[skip_top:skip_top + top_k] if d not in ex.negatives]
            added += len(mined)
            negatives = list(ex.negatives) + mined
            f.write(json.dumps({"query": ex.query, "positives": {"doc_id": [str(d) for d in ex.positives]},
                                "negatives": {"doc_id": [str(d) for d in negatives]}}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, destination / TRAIN_FILE)
    _same_passages(source / PASSAGES_FILE, destination / PASSAGES_FILE)
    return MiningResult(destination, len(examples), added)


def _same_passages(source: Path, target: Path) -> None:
    """``target`` holds the bytes of ``source``: a hard link, or a copy where the two are on different file
    systems."""
    if target.is_symlink() or target.exists():
        target.unlink()
    try:
        os.link(source.resolve(), target)
    except OSError:
        shutil.copyfile(source, target)
