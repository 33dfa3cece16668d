"""embed-corpus's progress bar: rows or bytes of the input done, passages/s, tokens/s, rejects, ETA."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from e5studio.jobs.batch_embed.windows import WindowResult


class Progress:
    """A tqdm bar over the input (bytes or rows) with passages/s, tokens/s and the ETA; quiet when disabled."""

    def __init__(self, total: int, initial: int, enabled: bool, units: str) -> None:
        self._bar: Any = None
        self.passages = 0
        self.tokens = 0
        self.rejects = 0
        self._t0 = time.perf_counter()
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, file=sys.stderr, dynamic_ncols=True,
                             desc="starting", bar_format="embed-corpus {percentage:3.0f}%|{bar}| {desc} "
                                                         "[{elapsed}, ETA {remaining}]")

    def update(self, result: WindowResult) -> None:
        self.passages += result.rows
        self.tokens += result.tokens
        self.rejects += len(result.rejects)
        if self._bar is not None:
            elapsed = max(time.perf_counter() - self._t0, 1e-9)
            self._bar.set_description_str(f"{self.passages:,} passages, {self.passages / elapsed:,.1f} passages/s, "
                                          f"{self.tokens / elapsed:,.0f} tokens/s, {self.rejects} rejected",
                                          refresh=False)
            self._bar.update(result.spec.end - result.spec.start)

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
