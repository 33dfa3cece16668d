"""Failed-login throttling per client address (the admin API and the web UI's login form share one).

After ``limit`` failed attempts within ``window_s`` from one address, that address gets CapacityError
(HTTP 429 with Retry-After) before its credentials are even looked at, until the oldest failure leaves the
window. Other addresses are not affected, so the right token still works from them.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from e5studio.errors import CapacityError

MAX_ADDRESSES = 10_000  # addresses remembered at most (the oldest are forgotten first)


class LoginThrottle:
    def __init__(self, limit: int = 10, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def check(self, address: str) -> None:
        """CapacityError if ``address`` failed ``limit`` times within the window."""
        with self._lock:
            failures = self._recent(address)
            if len(failures) >= self.limit:
                retry = failures[0] + self.window_s - self._clock()
                raise CapacityError(f"too many failed logins from {address}: {len(failures)} in the last "
                                    f"{self.window_s:g} s; retry later", retry_after_s=max(1.0, retry))

    def failed(self, address: str) -> None:
        with self._lock:
            failures = self._recent(address)
            failures.append(self._clock())
            self._failures[address] = failures
            self._failures.move_to_end(address)
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)

    def _recent(self, address: str) -> collections.deque[float]:
        failures = self._failures.get(address, collections.deque())
        horizon = self._clock() - self.window_s
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            self._failures.pop(address, None)
        return failures


def client_address(scope_client: tuple[str, int] | None) -> str:
    return scope_client[0] if scope_client else "unknown"
