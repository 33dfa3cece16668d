"""Writing finished windows on a background thread while the next window is embedded.

Writing a shard (Parquet encoding, zstd, fsync) and committing it to the manifest take a window's worth of CPU
and disk time that need not wait for the engine: :class:`WriteBehind` runs them on one thread, in the order
they were submitted, so the manifest still lists windows in input order and a crash still leaves only whole,
listed shards. At most ``depth`` finished windows wait to be written (the caller blocks beyond that), so the
vectors held in memory stay bounded: the window being embedded, ``depth`` waiting, one being written.

An error while writing is raised to the caller at its next :meth:`~WriteBehind.submit` or at
:meth:`~WriteBehind.close`; nothing submitted after the failed window is written (its commit would leave a gap
in the manifest that a resume fills anyway, but it would be written out of order). :meth:`~WriteBehind.close`
also runs on the caller's own errors (Ctrl-C included): windows already embedded are written before the job
stops, so no finished work is thrown away.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_STOP = object()


class WriteBehind(Generic[T]):
    """``write(item)`` for every submitted item, in order, on one background thread (module docstring)."""

    def __init__(self, write: Callable[[T], None], depth: int = 1, name: str = "embed-corpus-writer") -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._write = write
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None:
                continue  # drain what was queued behind the failed window, write none of it
            try:
                self._write(item)  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, item: T) -> None:
        """Queue ``item`` for writing (blocks while ``depth`` items wait); raises an earlier write's error."""
        self._raise()
        while True:
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                self._raise()  # the writer died: do not wait for it forever

    def close(self) -> None:
        """Wait until everything submitted is written; raises the first write error, if any."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()
        self._raise()
