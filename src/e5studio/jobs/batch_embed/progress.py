"""embed-corpus's part of its job's progress: where the line stands, the counts of its summary, the rows its
record says are done.

The line is a phase of the one progress type (:mod:`e5studio.jobspec.progress`, through the job's handle:
terminal, log lines, ``progress.json`` for the web page). It counts rows (Parquet; a line file small enough to
count first) or megabytes (a line file too large to count: there MB say how far it is), and moves after every
micro-batch (:meth:`EmbedTally.rows_done`, the embedding thread). The counts of the summary (``passages``,
``tokens``, ``rejects``) and the job's recorded step are those written and committed (:meth:`EmbedTally.update`,
the writer thread, a window later).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from e5studio.jobspec.layout import PROGRESS_FILE
from e5studio.jobspec.progress import Progress

if TYPE_CHECKING:
    from e5studio.jobs.batch_embed.reader import InputSpec, WindowSpec
    from e5studio.jobs.batch_embed.windows import WindowResult
    from e5studio.jobs.lifecycle import JobHandle

COUNT_LINES_UP_TO = 64 * 2**20  # bytes: a line file up to this is counted in rows first (a fraction of a second)
_CHUNK = 1 << 20


def count_lines(path: Path) -> int:
    """Input lines as the reader numbers them: every newline, and a last line without one."""
    lines, last = 0, b"\n"
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def _megabytes(value: float) -> str:
    return f"{value / 1e6:,.1f}"


@dataclass(frozen=True)
class Measure:
    """How the line measures the input: ``rows`` (window ends by line or row number) or ``MB`` (by byte)."""

    unit: str
    total: int

    @property
    def by_bytes(self) -> bool:
        return self.unit == "MB"

    def end(self, spec: WindowSpec) -> int:
        """Where the line stands once window ``spec`` is done."""
        return spec.end if self.by_bytes else spec.first + spec.count

    def start(self, spec: WindowSpec | None) -> int:
        """Where the line starts when the run begins at window ``spec`` (None: the input's start)."""
        if spec is None:
            return 0
        return spec.start if self.by_bytes else spec.first

    def scale(self) -> Callable[[float], str] | None:
        return _megabytes if self.by_bytes else None

    @classmethod
    def of(cls, spec: InputSpec) -> Measure:
        if spec.format == "parquet":
            return cls("rows", spec.total())
        size = spec.path.stat().st_size
        return cls("rows", count_lines(spec.path)) if size <= COUNT_LINES_UP_TO else cls("MB", size)


def display(output: Path, enabled: bool) -> Progress:
    """embed-corpus's progress: stderr (``enabled``) and ``progress.json`` in the output for the web page."""
    return Progress("embed-corpus", enabled=enabled, status_file=output / PROGRESS_FILE)


class EmbedTally:
    """The input done with passages/s, tokens/s and rejects on the job's line; the counts of its summary; the
    rows done (``recorded()``: embedded or rejected, all runs) on its record.

    ``handle``: the job's handle; ``start``: the window the run begins at; ``quiet``: no line (nothing to embed).
    """

    def __init__(self, handle: JobHandle, measure: Measure, start: WindowSpec | None, quiet: bool,
                 recorded: Callable[[], int]) -> None:
        self.passages = 0
        self.tokens = 0
        self.rejects = 0
        self._t0 = time.perf_counter()
        self._handle = handle
        self._measure = measure
        self._recorded = recorded
        initial = measure.start(start)
        self._phase = None if quiet else handle.phase("embedding passages", measure.total, measure.unit, initial,
                                                      scale=measure.scale())
        self._at = initial
        self._lock = threading.Lock()
        self._embedded_passages = 0  # embedded, maybe not yet written: where the line stands
        self._embedded_tokens = 0
        self._embedded_at = initial

    def _move(self, passages: float, tokens: float, at: float) -> None:
        if self._phase is None:
            return
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        self._phase.note(f"{passages:,.0f} passages, {passages / elapsed:,.1f} passages/s, "
                         f"{tokens / elapsed:,.0f} tokens/s, {self.rejects} rejected")
        self._phase.update_to(at)

    def rows_done(self, spec: WindowSpec, rows: int, tokens: int) -> Callable[[int], None]:
        """A callback for ``Embedder.embed_ids``: the window ``spec`` (``rows`` records, ``tokens`` tokens) is
        embedded as far as the rows it is told."""
        span = self._measure.end(spec) - self._measure.start(spec)

        def done(finished: int) -> None:
            share = finished / max(rows, 1)
            with self._lock:
                self._move(self._embedded_passages + finished, self._embedded_tokens + tokens * share,
                           max(self._at, self._embedded_at + span * share))
        return done

    def embedded(self, spec: WindowSpec, rows: int, tokens: int) -> None:
        """The window ``spec`` is embedded (its shard may still be being written)."""
        with self._lock:
            self._embedded_passages += rows
            self._embedded_tokens += tokens
            self._embedded_at = max(self._embedded_at, self._measure.end(spec))

    def update(self, result: WindowResult) -> None:
        """The window of ``result`` is written and committed."""
        with self._lock:
            self.passages += result.rows
            self.tokens += result.tokens
            self.rejects += len(result.rejects)
            self._at = max(self._at, self._measure.end(result.spec))
            # executors that report only finished windows (Ray) move the line here
            self._embedded_passages = max(self._embedded_passages, self.passages)
            self._embedded_tokens = max(self._embedded_tokens, self.tokens)
            self._embedded_at = max(self._embedded_at, self._at)
            self._move(self._embedded_passages, self._embedded_tokens, self._embedded_at)
        self._handle.progress(self._recorded(), None if self._measure.by_bytes else self._measure.total)

    def write(self, message: str) -> None:
        self._handle.write(message)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0
