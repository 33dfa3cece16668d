"""Bounds on every call to the control store, and what a store that cannot answer becomes: a
:class:`~e5studio.errors.StoreUnavailableError` (HTTP 503 with Retry-After; the CLI's retryable exit), never a
hang or a 500.

PostgreSQL, three bounds (:class:`~e5studio.settings.StoreTimeouts`):

- connect: psycopg's ``connect_timeout`` (a server that accepts TCP but never answers the startup);
- checkout: how long a call waits for a pooled connection (SQLAlchemy's ``pool_timeout``);
- statement: the server's ``statement_timeout`` for a slow statement or a lock wait, and a watchdog on this side
  for a server that does not answer at all (its processes stopped, a network partition that drops packets):
  a call still running past its bound has the sockets of its connections shut down, so the driver's wait ends
  with a disconnect at once (the connection is discarded; the fd stays open until the pool closes it, so no
  other socket can be hit).

A call that met an unreachable server opens the circuit: the calls after it fail at once (no event loop waits
on a server known to be away) while a probe thread tries the server every :data:`PROBE_EVERY_S` and closes the
circuit at its first answer. A slow statement (the server's own timeout) or a full pool does not open it.

SQLite: a lock held past the busy timeout, a full disk, a read-only file or directory, an I/O error: the call's
error names the file; reads are unaffected by what stops writes.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from e5studio.errors import StoreUnavailableError
from e5studio.settings import StoreTimeouts

log = logging.getLogger("e5studio")
PROBE_EVERY_S = 0.5  # an open circuit tries the server this often
MAX_PROBES = 8  # probes waiting at once on a store that does not answer
WATCH_EVERY_S = 0.05  # the watchdog's tick
RETRY_AFTER_S = 2.0
# PostgreSQL errors of a server that answers (a statement or lock wait over the server's own timeout)
_ANSWERED_SQLSTATES = {"57014", "55P03", "40P01", "40001"}
# SQLite's words for a store that cannot take a write (or any call) now, and how to say it
_SQLITE_MESSAGES = [
    ("database or disk is full", "cannot be written: its disk is full"),
    ("readonly database", "cannot be written: it (or its directory) is read-only"),
    ("disk i/o error", "cannot be written: a disk I/O error (its file system full or read-only?)"),
    ("unable to open database file", "cannot be opened (its directory is missing, unreadable or read-only)"),
    ("locked", "is busy: another process held its write lock past the busy timeout"),
    ("busy", "is busy: another process held its write lock past the busy timeout"),
]


@dataclass
class _Call:
    """One store call of one thread: its deadline and the DB-API connections it has checked out."""

    deadline: float
    depth: int = 1
    connections: dict[int, Any] = field(default_factory=dict)  # id(dbapi connection) -> connection
    expired: bool = False


class _Watchdog:
    """One thread per process: shuts down the sockets of the calls past their deadline."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: dict[int, _Call] = {}  # id(call) -> call
        self._thread: threading.Thread | None = None

    def add(self, call: _Call) -> None:
        with self.lock:
            self.calls[id(call)] = call
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True, name="e5studio-store-watchdog")
                self._thread.start()

    def remove(self, call: _Call) -> None:
        with self.lock:
            self.calls.pop(id(call), None)

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_EVERY_S)
            now = time.monotonic()
            with self.lock:
                for call in self.calls.values():
                    if now >= call.deadline and not call.expired:
                        call.expired = True
                        for connection in call.connections.values():
                            _shut_down(connection)

    def detach(self, connection: Any) -> None:
        """The connection goes back to the pool or is closed: no call's watchdog may touch it now."""
        with self.lock:
            for call in self.calls.values():
                call.connections.pop(id(connection), None)


WATCHDOG = _Watchdog()


def is_driver_outage(exc: BaseException) -> bool:
    """Whether ``exc`` is the driver's own connection-level error (psycopg's OperationalError, InterfaceError)."""
    return any(cls.__name__ in ("OperationalError", "InterfaceError") and cls.__module__.startswith("psycopg")
               for cls in type(exc).__mro__)


def _shut_down(connection: Any) -> None:
    """End the driver's wait on ``connection`` (a psycopg connection): shut its socket down (the fd stays)."""
    try:
        fd = connection.pgconn.socket
        sock = socket.socket(fileno=os.dup(fd))
    except Exception:  # noqa: BLE001 - closed meanwhile, or not a socket: nothing is waiting on it
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


class StoreGuard:
    """The bounds, the error translation and the circuit of one store (``where``: its file or safe URL)."""

    def __init__(self, where: str, timeouts: StoreTimeouts, *, sqlite: bool) -> None:
        self.where = where
        self.timeouts = timeouts
        self.sqlite = sqlite
        self._local = threading.local()
        self._state = threading.Lock()
        self._open_since: float | None = None  # monotonic time the circuit opened (None: closed)
        self._open_reason = ""
        self._probe: Callable[[], None] | None = None
        self._prober: threading.Thread | None = None
        self._closed = False

    # -- the circuit ---------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether the store answered its last call (False while the circuit is open)."""
        return self._open_since is None

    @property
    def unavailable_reason(self) -> str:
        return self._open_reason

    def _unavailable(self, reason: str) -> StoreUnavailableError:
        return StoreUnavailableError(f"the control store {self.where} {reason}; retry shortly", RETRY_AFTER_S)

    def _trip(self, reason: str) -> None:
        with self._state:
            if self._open_since is not None or self._probe is None or self._closed:
                return
            self._open_since = time.monotonic()
            self._open_reason = reason
            log.warning("the control store %s is unreachable (%s): calls fail at once until it answers again",
                        self.where, reason)
            self._prober = threading.Thread(target=self._probe_loop, daemon=True, name="e5studio-store-probe")
            self._prober.start()

    def _probe_loop(self) -> None:
        """A probe every PROBE_EVERY_S, each in its own thread (one may wait out its bounds on a store that is
        still away while the next already finds it back); the first that answers closes the circuit."""
        answered = threading.Event()
        in_flight: list[threading.Thread] = []

        def probe() -> None:
            try:
                assert self._probe is not None
                self._probe()
            except Exception:  # noqa: BLE001 - still away: a later probe tries again
                return
            answered.set()

        while not self._closed and not answered.is_set():
            in_flight = [thread for thread in in_flight if thread.is_alive()]
            if len(in_flight) < MAX_PROBES:
                thread = threading.Thread(target=probe, daemon=True, name="e5studio-store-probe")
                thread.start()
                in_flight.append(thread)
            answered.wait(PROBE_EVERY_S)
        with self._state:
            since = self._open_since
            self._open_since, self._open_reason = None, ""
        if since is not None and answered.is_set():
            log.warning("the control store %s answers again (after %.1f s)", self.where, time.monotonic() - since)

    def close(self) -> None:
        self._closed = True

    # -- one call ------------------------------------------------------------------------------------

    @contextmanager
    def call(self, *, probing: bool = False) -> Iterator[None]:
        """One store call: refused at once while the circuit is open (unless ``probing``), bounded by the
        statement timeout (PostgreSQL), its database errors turned into StoreUnavailableError."""
        if not probing and self._open_since is not None:
            raise self._unavailable(f"is unreachable ({self._open_reason})")
        current: _Call | None = getattr(self._local, "call", None)
        if current is not None:  # a call inside a call: the outer one's deadline holds
            current.depth += 1
            try:
                with self._translated():
                    yield
            finally:
                current.depth -= 1
            return
        call = _Call(deadline=time.monotonic() + self.timeouts.statement_s)
        self._local.call = call
        if not self.sqlite:
            WATCHDOG.add(call)
        try:
            with self._translated(call):
                yield
        finally:
            self._local.call = None
            if not self.sqlite:
                WATCHDOG.remove(call)

    @contextmanager
    def _translated(self, call: _Call | None = None) -> Iterator[None]:
        try:
            yield
        except StoreUnavailableError:
            raise
        except sa.exc.TimeoutError as exc:  # the pool's checkout bound: every connection busy
            raise self._unavailable(f"had no free connection within {self.timeouts.checkout_s:g} s") from exc
        except Exception as exc:
            cause: BaseException = exc
            if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
                cause = exc.orig
            outage = isinstance(cause, sqlite3.OperationalError) or is_driver_outage(cause) \
                or isinstance(exc, sa.exc.DisconnectionError)
            translated = self._translate(cause, call) if outage else None
            if translated is None:
                raise
            raise translated from exc

    def _translate(self, exc: BaseException, call: _Call | None) -> StoreUnavailableError | None:
        text = (str(exc).splitlines() or [type(exc).__name__])[0]
        if self.sqlite:
            lowered = text.lower()
            for words, said in _SQLITE_MESSAGES:
                if words in lowered:
                    return self._unavailable(f"{said} ({text})")
            return None  # a statement error (no such table...): a bug, not an outage
        if call is not None and call.expired:
            reason = f"did not answer within {self.timeouts.statement_s:g} s"
        elif getattr(exc, "sqlstate", None) in _ANSWERED_SQLSTATES:
            return self._unavailable(f"did not finish a statement within {self.timeouts.statement_s:g} s ({text})")
        else:
            reason = f"cannot be reached: {text}"
        self._trip(reason)
        return self._unavailable(reason)

    # -- PostgreSQL: the pool's events -----------------------------------------------------------------

    def install(self, engine: sa.Engine, probe: Callable[[], None]) -> None:
        """Watch ``engine``'s connections (PostgreSQL): each checked-out connection belongs to the call of its
        thread (the watchdog may shut it down), is pinged on checkout unless new, and leaves the call when it
        returns to the pool or is closed. ``probe``: one cheap call that bypasses the circuit."""
        self._probe = probe
        fresh: set[int] = set()

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: object) -> None:
            fresh.add(id(dbapi_connection))

        @sa.event.listens_for(engine, "checkout")
        def _checkout(dbapi_connection: Any, _record: object, _proxy: object) -> None:
            call: _Call | None = getattr(self._local, "call", None)
            if call is not None:
                if call.expired or time.monotonic() >= call.deadline:
                    raise self._unavailable(f"did not answer within {self.timeouts.statement_s:g} s")
                with WATCHDOG.lock:
                    call.connections[id(dbapi_connection)] = dbapi_connection
            if id(dbapi_connection) in fresh:
                fresh.discard(id(dbapi_connection))
                return
            try:  # the pool's pre-ping, here so that the watchdog bounds it too
                engine.dialect.do_ping(dbapi_connection)
                dbapi_connection.rollback()
            except Exception as exc:
                WATCHDOG.detach(dbapi_connection)
                raise sa.exc.DisconnectionError(f"ping failed: {exc}") from exc

        def _gone(dbapi_connection: Any, *_args: object) -> None:
            fresh.discard(id(dbapi_connection))
            WATCHDOG.detach(dbapi_connection)

        for name in ("checkin", "close", "invalidate", "soft_invalidate", "close_detached", "detach"):
            sa.event.listen(engine, name, _gone)


def pg_connect_args(timeouts: StoreTimeouts, *, statement: bool = True) -> dict[str, Any]:
    """psycopg's connect arguments for the bounds (whole seconds for libpq's connect timeout, at least 1)."""
    args: dict[str, Any] = {"connect_timeout": max(1, round(timeouts.connect_s))}
    if statement:
        args["options"] = f"-c statement_timeout={max(1, round(timeouts.statement_s * 1000))}"
    return args
