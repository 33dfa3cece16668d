"""One window of the input: tokenised (on the prefetch thread), embedded in length-sorted token-budget
micro-batches, written as one Parquet shard."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from e5studio.errors import InputError
from e5studio.jobs.batch_embed.chunking import Chunker, ChunkRow, chunk_columns
from e5studio.jobs.batch_embed.reader import InputSpec, Reject, Window, WindowSpec
from e5studio.jobs.batch_embed.writer import ShardInfo, text_sha256, write_shard
from e5studio.jobspec.layout import REJECTS_FILE

if TYPE_CHECKING:  # torch is imported only when a job runs
    from e5studio.engine.embedder import Embedder

_LISTED_REJECTS = 10


@dataclass
class WindowResult:
    spec: WindowSpec
    shard: ShardInfo | None
    rejects: list[Reject]
    tokens: int
    device: str
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return self.shard.rows if self.shard else 0


def bad_records_error(spec: InputSpec, rejects: list[Reject]) -> InputError:
    shown = "\n  ".join(r.describe(spec) for r in rejects[:_LISTED_REJECTS])
    more = f"\n  ... and {len(rejects) - _LISTED_REJECTS} more in this window" if len(rejects) > _LISTED_REJECTS \
        else ""
    return InputError(f"bad records in {spec.path} (--bad-records fail):\n  {shown}{more}\n"
                      f"fix them, or pass --bad-records skip to write them to {REJECTS_FILE} and go on")


@dataclass
class PreparedWindow:
    window: Window
    token_ids: list[np.ndarray] = field(default_factory=list)
    chunks: list[ChunkRow] | None = None  # knowledge bases: the row of each token-id array (None: one per record)

    @property
    def tokens(self) -> int:
        return int(sum(len(ids) for ids in self.token_ids))


def prepare_window(embedder: Embedder, window: Window, input_type: str | None,
                   chunk: int = 1024, chunker: Chunker | None = None) -> PreparedWindow:
    """Token ids of a window's records (tokenised ``chunk`` texts at a time: the tokenizer's own per-text
    buffers, overflow included, are much larger than the ids kept); with a ``chunker``, of the chunks of its
    documents (a document that cannot be chunked becomes a reject)."""
    if chunker is not None:
        return _prepare_chunks(window, chunker)
    texts = [r.text for r in window.records]
    ids: list[np.ndarray] = []
    for start in range(0, len(texts), chunk):
        ids += embedder.tokenize(texts[start:start + chunk], input_type)
    return PreparedWindow(window, ids)


def _prepare_chunks(window: Window, chunker: Chunker) -> PreparedWindow:
    rows: list[ChunkRow] = []
    ids: list[np.ndarray] = []
    kept = []
    for record in window.records:
        split = chunker.split(record)
        if isinstance(split, tuple):
            rows += split[0]
            ids += split[1]
            kept.append(record)
        else:
            window.rejects.append(split)
    window.records = kept
    window.rejects.sort(key=lambda r: r.line)
    return PreparedWindow(window, ids, rows)


@dataclass
class EmbeddedWindow:
    """A window whose vectors are computed, waiting to be written."""

    prepared: PreparedWindow
    vectors: np.ndarray | None  # [n, dim] float32 in input order; None for a window without records
    device: str
    seconds: float


def embed_vectors(embedder: Embedder, prepared: PreparedWindow,
                  progress: Callable[[int], None] | None = None) -> EmbeddedWindow:
    """Embed one tokenised window (length-sorted, token-budget micro-batches); ``progress(rows finished)``
    after each micro-batch."""
    t0 = time.perf_counter()
    vectors = embedder.embed_ids(prepared.token_ids, progress) if prepared.token_ids else None
    return EmbeddedWindow(prepared, vectors, embedder.device, time.perf_counter() - t0)


def write_window(embedded: EmbeddedWindow, output: Path) -> WindowResult:
    """Write an embedded window's shard (atomically); the result the manifest records."""
    t0 = time.perf_counter()
    window = embedded.prepared.window
    shard = None
    chunks = embedded.prepared.chunks
    if embedded.vectors is not None and chunks is not None:
        shard = write_shard(output, window.spec.index, [c.id for c in chunks], [text_sha256(c.text) for c in chunks],
                            embedded.vectors, chunk_columns(chunks))
    elif embedded.vectors is not None:
        shard = write_shard(output, window.spec.index, [r.id for r in window.records],
                            [text_sha256(r.text) for r in window.records], embedded.vectors)
    return WindowResult(window.spec, shard, window.rejects, embedded.prepared.tokens, embedded.device,
                        embedded.seconds + time.perf_counter() - t0)


def embed_window(embedder: Embedder, prepared: PreparedWindow, output: Path,
                 progress: Callable[[int], None] | None = None) -> WindowResult:
    """Embed one tokenised window and write its shard, one after the other (the Ray executor's worker; the
    local executor overlaps the two: :mod:`.write_behind`)."""
    return write_window(embed_vectors(embedder, prepared, progress), output)
