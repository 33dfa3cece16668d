"""Failed-login throttling per client address (the admin API and the web UI's login form share one).

After ``limit`` failed attempts within ``window_s`` from one address, that address gets CapacityError
(HTTP 429 with Retry-After) before its credentials are even looked at, until the oldest failure leaves the
window. Other addresses are not affected, so the right token still works from them.

Where the failures are kept is a :class:`FailureLog`: the control store (``Store`` is one: every server sharing
the store counts the same failures, so attempts spread over several replicas are throttled together), or this
process's memory (:class:`MemoryFailureLog`, the default).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Protocol

from e5studio.errors import CapacityError

MAX_ADDRESSES = 10_000  # addresses remembered at most in memory (the oldest are forgotten first)


class FailureLog(Protocol):
    """Failed logins by address, with their times (seconds; the throttle's clock)."""

    def record_login_failure(self, address: str, at: float, forget_before: float) -> None: ...

    def login_failures(self, address: str, since: float) -> list[float]: ...


class MemoryFailureLog:
    """Failures in this process's memory (at most :data:`MAX_ADDRESSES` addresses, the oldest forgotten)."""

    def __init__(self) -> None:
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def record_login_failure(self, address: str, at: float, forget_before: float) -> None:
        with self._lock:
            failures = self._recent(address, forget_before)
            failures.append(at)
            self._failures[address] = failures
            self._failures.move_to_end(address)
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)

    def login_failures(self, address: str, since: float) -> list[float]:
        with self._lock:
            return list(self._recent(address, since))

    def _recent(self, address: str, horizon: float) -> collections.deque[float]:
        failures = self._failures.get(address, collections.deque())
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            self._failures.pop(address, None)
        return failures


class LoginThrottle:
    """``check`` before looking at credentials, ``failed`` after wrong ones. ``failures``: where they are kept
    (the store, for replicas sharing it; default this process's memory). ``clock``: seconds since the epoch
    (replicas compare each other's times)."""

    def __init__(self, limit: int = 10, window_s: float = 60.0, clock: Callable[[], float] = time.time,
                 failures: FailureLog | None = None) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._failures: FailureLog = failures if failures is not None else MemoryFailureLog()

    def check(self, address: str) -> None:
        """CapacityError if ``address`` failed ``limit`` times within the window."""
        now = self._clock()
        failures = self._failures.login_failures(address, now - self.window_s)
        if len(failures) >= self.limit:
            retry = failures[0] + self.window_s - now
            raise CapacityError(f"too many failed logins from {address}: {len(failures)} in the last "
                                f"{self.window_s:g} s; retry later", retry_after_s=max(1.0, retry))

    def failed(self, address: str) -> None:
        now = self._clock()
        self._failures.record_login_failure(address, now, now - self.window_s)


def client_address(scope_client: tuple[str, int] | None) -> str:
    return scope_client[0] if scope_client else "unknown"
