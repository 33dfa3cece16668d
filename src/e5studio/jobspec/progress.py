"""Progress of a long job, the one type every job and command shows it with: a named phase, done/total, rate,
tokens/s, ETA; one phase at a time (a new phase ends the one before).

On a terminal the line is redrawn in place (at most 5 times a second); when stderr is not a terminal (a log
file, the server's job log) a plain line is printed when a phase starts, every ``interval`` seconds (5 s) and
when it ends. With a ``status_file`` the phase and its progress are also written there as JSON (at most once
a second), which is what the web UI's job page shows (:func:`read_status`).

Pure Python (the job spec floor): the CLI, the jobs and the web UI all use it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from e5studio.jobspec.layout import PROGRESS_FILE

PLAIN_INTERVAL_S = 5.0
TTY_INTERVAL_S = 0.2
STATUS_INTERVAL_S = 1.0


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Phase:
    """One phase of a job: ``advance``/``update_to`` as work is done, ``close`` at its end."""

    def __init__(self, reporter: Progress, name: str, total: int | None, unit: str, initial: int = 0,
                 scale: Callable[[float], str] | None = None) -> None:
        self.reporter = reporter
        self.name = name
        self.total = total
        self.unit = unit
        self.done = initial
        self._initial = initial
        self.tokens = 0
        self.extra = ""
        self._scale = scale or (lambda v: f"{v:,.0f}")
        self._t0 = reporter.clock()
        self._closed = False
        reporter.show(self, force=True)

    @property
    def elapsed(self) -> float:
        return self.reporter.clock() - self._t0

    @property
    def rate(self) -> float:
        return (self.done - self._initial) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if not self.total or self.rate <= 0:
            return None
        return max(self.total - self.done, 0) / self.rate

    def advance(self, n: float = 1, tokens: int = 0) -> None:
        self.update_to(self.done + n, self.tokens + tokens)

    def update_to(self, done: float, tokens: int | None = None) -> None:
        self.done = int(done) if float(done).is_integer() else done  # type: ignore[assignment]
        if tokens is not None:
            self.tokens = tokens
        self.reporter.show(self)

    def note(self, extra: str) -> None:
        """Words shown after the counts (loss, rejects ...)."""
        self.extra = extra

    def line(self) -> str:
        parts = [f"{self.reporter.job}: {self.name}"]
        if self.total:
            pct = 100.0 * self.done / self.total if self.total else 0.0
            parts.append(f"{self._scale(self.done)}/{self._scale(self.total)} {self.unit} {pct:3.0f}%")
        else:
            parts.append(f"{self._scale(self.done)} {self.unit}")
        if self.elapsed >= 0.5 and self.done > self._initial:
            parts.append(f"{self._scale(self.rate)} {self.unit}/s")
            if self.tokens:
                parts.append(f"{self.tokens / self.elapsed:,.0f} tokens/s")
        if self.extra:
            parts.append(self.extra)
        eta = self.eta_s
        parts.append(f"{format_duration(self.elapsed)} elapsed" + (f", ETA {format_duration(eta)}"
                                                                    if eta is not None else ""))
        return "  ".join(parts)

    def status(self) -> dict[str, Any]:
        return {"job": self.reporter.job, "phase": self.name, "done": self.done, "total": self.total,
                "unit": self.unit, "rate": round(self.rate, 3), "eta_s": None if self.eta_s is None
                else round(self.eta_s, 1), "line": self.line(), "updated_at": time.time(),
                "finished": self._closed}

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.reporter.show(self, force=True, final=True)


class Progress:
    """Where a job's progress goes: stderr (``enabled``) and/or a status file; one phase at a time.

    Job kinds name their phases through it (``train: epoch 1 of 3``, ``embed-corpus: embedding passages``);
    :meth:`callback` turns it into the ``(phase, done, total)`` callback that evaluation and mining report to.
    """

    def __init__(self, job: str, enabled: bool = True, stream: TextIO | None = None,
                 status_file: Path | None = None, interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.job = job
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.status_file = status_file
        self.clock = clock
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.interval_s = interval_s if interval_s is not None else (TTY_INTERVAL_S if self.tty
                                                                     else PLAIN_INTERVAL_S)
        self._last_shown = float("-inf")
        self._last_status = float("-inf")
        self._drawn = 0  # characters of the line drawn in place (terminal)
        self.current: Phase | None = None

    def phase(self, name: str, total: int | None, unit: str = "rows", initial: int = 0,
              scale: Callable[[float], str] | None = None) -> Phase:
        """Start phase ``name`` (``total`` units, None when unknown); the phase before it ends."""
        self.close()
        self.current = Phase(self, name, total, unit, initial, scale)
        return self.current

    def close(self) -> None:
        """End the phase in progress (its last line), if any."""
        if self.current is not None:
            self.current.close()

    def callback(self, names: Mapping[str, str], prefix: str = "",
                 units: Mapping[str, str] | None = None) -> Callable[[str, int, int], None]:
        """A ``(phase, done, total)`` callback (what :mod:`e5studio.retrieval.evaluate` and mining report) that
        shows each reported phase under its name in ``names`` (after ``prefix``, as ``prefix: name``), in
        ``units`` (default rows); a phase ends when it reaches its total."""
        def shown(part: str, done: int, total: int) -> None:
            name = names.get(part, part)
            name = f"{prefix}: {name}" if prefix else name
            phase = self.current
            if phase is None or phase.name != name or (phase.closed and done < total):  # a phase, or a new pass
                phase = self.phase(name, total, (units or {}).get(part, "rows"))
            elif phase.closed:  # its end told again
                return
            phase.update_to(done)
            if done >= total:
                phase.close()

        return shown

    def show(self, phase: Phase, force: bool = False, final: bool = False) -> None:
        now = self.clock()
        if self.status_file is not None and (force or now - self._last_status >= STATUS_INTERVAL_S):
            self._last_status = now
            write_status(self.status_file, phase.status())
        if not self.enabled or not (force or now - self._last_shown >= self.interval_s):
            return
        self._last_shown = now
        line = phase.line()
        if self.tty:
            pad = max(self._drawn - len(line), 0)
            self.stream.write("\r" + line + " " * pad + ("\n" if final else ""))
            self._drawn = 0 if final else len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def write(self, message: str) -> None:
        """A line of its own (above a line drawn in place)."""
        if self.tty and self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0
        print(message, file=self.stream, flush=True)


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Written in place (one small write; a reader that catches it half-written skips it, see
    :func:`read_status`), so that progress adds no renames to the job's own atomic ones."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(status) + "\n", encoding="utf-8")
    except OSError:  # progress is never worth failing a job over
        pass


def read_status(folder: Path) -> dict[str, Any] | None:
    """The newest progress status written under a job folder (``progress.json`` in it or one level down)."""
    candidates = [folder / PROGRESS_FILE, *folder.glob(f"*/{PROGRESS_FILE}")] if folder.is_dir() else []
    newest: dict[str, Any] | None = None
    for path in candidates:
        try:
            status = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(status, dict) and (newest is None or status.get("updated_at", 0) > newest.get("updated_at", 0)):
            newest = status
    return newest


def phase_lines(job: str, names: Mapping[str, str], enabled: bool = True) -> Callable[[str, int, int], None]:
    """A ``(phase, done, total)`` callback on a progress of its own for ``job`` (:meth:`Progress.callback`)."""
    return Progress(job, enabled=enabled).callback(names)
