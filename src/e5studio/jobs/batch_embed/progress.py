"""embed-corpus's progress: the input done (bytes or rows), passages/s, tokens/s, rejects, ETA, moved after
every micro-batch (:mod:`e5studio.jobspec.progress` draws it; ``progress.json`` in the output holds it for the
web UI)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from e5studio.jobspec.layout import PROGRESS_FILE
from e5studio.jobspec.progress import Progress as Reporter

if TYPE_CHECKING:
    from e5studio.jobs.batch_embed.reader import WindowSpec
    from e5studio.jobs.batch_embed.windows import WindowResult


def _megabytes(value: float) -> str:
    return f"{value / 1e6:,.1f}" if value >= 1e7 else f"{value / 1e6:,.2f}"


class Progress:
    """The input done (``units``: ``line``: bytes, ``row``: rows) with passages/s, tokens/s and the ETA; quiet
    when disabled.

    The line moves as vectors are computed (:meth:`rows_done`, :meth:`embedded`, the embedding thread); the
    counts of the job's summary (``passages``, ``tokens``, ``rejects``) are those written and committed
    (:meth:`update`, the writer thread, a window later).
    """

    def __init__(self, total: int, initial: int, enabled: bool, units: str, output: Path | None = None) -> None:
        self.passages = 0
        self.tokens = 0
        self.rejects = 0
        self._t0 = time.perf_counter()
        self._reporter = Reporter("embed-corpus", enabled=enabled, stream=sys.stderr,
                                  status_file=output / PROGRESS_FILE if output is not None else None)
        by_bytes = units == "line"  # line files count bytes, Parquet files rows (InputSpec.total)
        self._phase = self._reporter.phase("embedding passages", total, "MB" if by_bytes else "rows", initial,
                                           scale=_megabytes if by_bytes else None)
        self._at = initial
        self._lock = threading.Lock()
        self._embedded_passages = 0  # embedded, maybe not yet written: where the line stands
        self._embedded_tokens = 0
        self._embedded_at = initial

    def _note(self, passages: float, tokens: float) -> None:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        self._phase.note(f"{passages:,.0f} passages, {passages / elapsed:,.1f} passages/s, "
                         f"{tokens / elapsed:,.0f} tokens/s, {self.rejects} rejected")

    def rows_done(self, spec: WindowSpec, rows: int, tokens: int) -> Callable[[int], None]:
        """A callback for ``Embedder.embed_ids``: the window ``spec`` (``rows`` records, ``tokens`` tokens) is
        embedded as far as the rows it is told."""
        def done(finished: int) -> None:
            share = finished / max(rows, 1)
            with self._lock:
                self._note(self._embedded_passages + finished, self._embedded_tokens + tokens * share)
                self._phase.update_to(max(self._at, self._embedded_at + (spec.end - spec.start) * share))
        return done

    def embedded(self, spec: WindowSpec, rows: int, tokens: int) -> None:
        """The window ``spec`` is embedded (its shard may still be being written)."""
        with self._lock:
            self._embedded_passages += rows
            self._embedded_tokens += tokens
            self._embedded_at = max(self._embedded_at, spec.end)

    def update(self, result: WindowResult) -> None:
        """The window of ``result`` is written and committed."""
        with self._lock:
            self.passages += result.rows
            self.tokens += result.tokens
            self.rejects += len(result.rejects)
            self._at = max(self._at, result.spec.end)
            # executors that report only finished windows (Ray) move the line here
            self._embedded_passages = max(self._embedded_passages, self.passages)
            self._embedded_tokens = max(self._embedded_tokens, self.tokens)
            self._embedded_at = max(self._embedded_at, self._at)
            self._note(self._embedded_passages, self._embedded_tokens)
            self._phase.update_to(self._embedded_at)

    def write(self, message: str) -> None:
        self._reporter.write(message)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def close(self) -> None:
        self._phase.close()
