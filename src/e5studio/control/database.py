"""One database shared by the control store's tables, through SQLAlchemy Core: the embedded SQLite file (the
default) or a PostgreSQL database that several servers (replicas) share.

- SQLite: a small connection pool (``check_same_thread=False``, 30 s busy timeout, foreign keys on, WAL for
  files so readers in other processes are not blocked); writes are serialised in this process by a lock and
  across processes by ``BEGIN IMMEDIATE`` (an event hook begins every write transaction that way).
  ``:memory:`` is one connection behind the same lock, reads included.
- PostgreSQL (``postgres://``, ``postgresql://`` or ``postgresql+psycopg://`` URLs, driver psycopg 3): a pool
  of connections; a write transaction takes one transaction-level advisory lock first, so the
  check-then-write transactions of the store are serialised across replicas exactly as ``BEGIN IMMEDIATE``
  serialises them on SQLite. Hot writes that need no check (heartbeats, lease renewals, failed logins,
  sessions, job claims with ``FOR UPDATE SKIP LOCKED``) skip that lock (``_write(serial=False)``).

Migrations (Alembic, one history for both databases: :mod:`.migrations`) are applied on open.
"""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from e5studio.control.migrations import SchemaState, schema_state, upgrade
from e5studio.control.store_guard import StoreGuard, is_driver_outage, pg_connect_args
from e5studio.errors import InputError, StoreUnavailableError
from e5studio.jobspec.layout import store_path
from e5studio.settings import StoreTimeouts

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)
_BUSY_TIMEOUT_S = 30.0  # switching an SQLite file to WAL (once, at open)
STORE_ENV = "E5STUDIO_STORE"  # the store URL, where --store is not given (CLI, and the job processes of a server)
# pg_advisory_xact_lock key of the store's serial write transactions ("e5studio" in ASCII; fits a signed bigint)
WRITE_LOCK_KEY = int.from_bytes(b"e5studio", "big")
_IMMEDIATE = "e5studio_immediate"  # execution option: begin the SQLite transaction with BEGIN IMMEDIATE


def now() -> str:
    return datetime.now(UTC).isoformat()


def new_id() -> str:
    return secrets.token_hex(8)


def could_name(ref: object) -> bool:
    """Whether ``ref`` could be a name or an id the store holds (both follow :data:`NAME_PATTERN`): a reference
    that could not is not found without a query (PostgreSQL refuses NUL characters in any text parameter)."""
    return isinstance(ref, str) and _NAME_RE.fullmatch(ref) is not None


def as_lookup(ref: object) -> str:
    """``ref`` as a query parameter of a lookup by name or id: itself, or "" (which names nothing) when it could
    not be a name or an id, so the lookup finds nothing and says so, on every backend."""
    return ref if isinstance(ref, str) and could_name(ref) else ""


def check_name(kind: str, name: str) -> None:
    if not could_name(name):  # fullmatch: "$" would let "name\n" in
        raise InputError(
            f"invalid {kind} name {name!r}: use 1-64 characters, letters, digits, '_', '.' or '-', "
            f"starting with a letter or digit (pattern {NAME_PATTERN})"
        )


def store_url(target: str | Path) -> URL:
    """The SQLAlchemy URL of a store: a path (or ``:memory:``) is the embedded SQLite file; ``sqlite:///PATH``;
    ``postgres://``, ``postgresql://`` or ``postgresql+psycopg://user:password@host:port/db`` is PostgreSQL
    through psycopg 3 (``?host=/path/to/socket`` for a Unix socket)."""
    text = str(target)
    if "://" not in text:
        return URL.create("sqlite", database=text)
    scheme = text.split("://", 1)[0].lower()
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        text = "postgresql+psycopg://" + text.split("://", 1)[1]
    elif scheme not in ("sqlite", "sqlite+pysqlite"):
        raise InputError(f"unsupported store URL {make_safe(text)!r}: use a file path, sqlite:///PATH or "
                         "postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
    try:
        return make_url(text)
    except sa.exc.ArgumentError as exc:
        raise InputError(f"store URL {make_safe(text)!r} is not valid: {exc}") from None


def make_safe(text: str) -> str:
    """A URL as it may be printed: any password replaced by ``***``."""
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", text)


def store_target(store: str | None, data_dir: str | Path) -> str:
    """What a command opens: ``--store``, else ``$E5STUDIO_STORE``, else the SQLite file in the data dir."""
    return store or os.environ.get(STORE_ENV) or str(store_path(Path(data_dir)))


def _use_wal(cursor: Any) -> None:
    """Put the SQLite file in WAL mode (persistent: a no-op once it is). Switching needs the file to itself,
    and SQLite answers "database is locked" at once, without waiting its busy timeout, while another
    connection (another server or CLI opening the store at the same moment) holds a lock: retried until
    the busy timeout."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        cursor.execute("PRAGMA journal_mode")
        if str(cursor.fetchone()[0]).lower() == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            if str(cursor.fetchone()[0]).lower() == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError("database is locked: could not switch the store to WAL mode "
                                           f"within {_BUSY_TIMEOUT_S:.0f} s")
        time.sleep(0.02)


@contextmanager
def _refused_values() -> Iterator[None]:
    """A value the database cannot hold (PostgreSQL: a NUL character in text) is the caller's input error, not a
    crash; the lookups avoid it (:func:`as_lookup`), this is the backstop for every other statement."""
    try:
        yield
    except (sa.exc.DataError, sqlite3.DataError) as exc:
        raise InputError(f"the store refused a value of the request: {_first_line(exc)}") from exc
    except Exception as exc:
        if type(exc).__name__ == "DataError":  # the driver's own, through a raw connection (psycopg.DataError)
            raise InputError(f"the store refused a value of the request: {_first_line(exc)}") from exc
        raise


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__


class Database:
    """The engine, its locks and its transactions; each table of the store is a subclass.

    ``target``: a file path, ``:memory:``, or a URL (:func:`store_url`). ``migrate``: apply the migrations this
    code knows (always refuses a store whose schema is newer than this code: :class:`~e5studio.errors.SchemaError`).
    ``timeouts``: the bounds on every call (:mod:`.store_guard`; None: ``$E5STUDIO_STORE_*_TIMEOUT``, which a
    server gives its job processes, else the defaults); a store that cannot answer within them raises
    :class:`~e5studio.errors.StoreUnavailableError`.
    """

    def __init__(self, target: str | Path, *, migrate: bool = True, timeouts: StoreTimeouts | None = None) -> None:
        self.url = store_url(target)
        self.timeouts = timeouts or StoreTimeouts.from_env()
        self.dialect = self.url.get_backend_name()  # "sqlite" or "postgresql"
        self.is_sqlite = self.dialect == "sqlite"
        database = self.url.database or ""
        self.in_memory = self.is_sqlite and database in ("", ":memory:")
        # the file of an SQLite store (":memory:" in memory); None for PostgreSQL
        self.path: str | None = (":memory:" if self.in_memory else database) if self.is_sqlite else None
        self._lock = threading.RLock()  # SQLite: writes (and, in memory, everything) one at a time
        self._guard = StoreGuard(self.path or self.display_url, self.timeouts, sqlite=self.is_sqlite)
        self._engine = self._create_engine()
        self._driver_sql: dict[int, tuple[str, sa.sql.compiler.SQLCompiler]] = {}  # id(statement) -> compiled
        try:
            with self._guard.call(probing=True):
                self.applied_migrations = self._migrate(migrate)
        except BaseException:
            self._guard.close()
            self._engine.dispose()
            raise
        if not self.is_sqlite:
            self._guard.install(self._engine, self._probe)

    def _migrate(self, apply: bool) -> list[str]:
        """Apply the migrations (PostgreSQL: on connections without the statement timeout, which a migration, or a
        wait for another replica's, may outlast)."""
        if self.is_sqlite:
            return upgrade(self._engine, apply=apply)
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool,
                                  connect_args=pg_connect_args(self.timeouts, statement=False))
        try:
            return upgrade(engine, apply=apply)
        finally:
            engine.dispose()

    def _probe(self) -> None:
        """One cheap round trip to the server (the circuit's probe: it bypasses the open circuit)."""
        with self._guard.call(probing=True), self._engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    @property
    def available(self) -> bool:
        """Whether the store answered its last call (False while it is known to be away: calls fail at once)."""
        return self._guard.available

    @property
    def unavailable_reason(self) -> str:
        """Why the store is known to be away ("" while it answers)."""
        return self._guard.unavailable_reason

    def schema_state(self) -> SchemaState:
        """The store's schema revision, this code's newest, and what an upgrade would apply."""
        return schema_state(self._engine)

    @property
    def display_url(self) -> str:
        """The store's URL with any password hidden (for messages and logs)."""
        return self.url.render_as_string(hide_password=True)

    @property
    def secret_url(self) -> str:
        """The full URL (password included): what job processes need to open the same store."""
        return self.url.render_as_string(hide_password=False)

    def _create_engine(self) -> Engine:
        if not self.is_sqlite:  # the guard pings on checkout (pre-ping, bounded by its watchdog)
            return sa.create_engine(self.url, pool_size=5, max_overflow=10, pool_recycle=1800,
                                    pool_timeout=self.timeouts.checkout_s,
                                    connect_args=pg_connect_args(self.timeouts))
        args: dict[str, Any] = {"timeout": self.timeouts.statement_s, "check_same_thread": False}
        if self.in_memory:
            engine = sa.create_engine("sqlite://", connect_args=args, poolclass=StaticPool)
        else:  # readable by the owner only: sessions and job records are in there
            assert self.path is not None
            Path(self.path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # SQLite's -wal/-shm take its mode
            engine = sa.create_engine(self.url, connect_args=args, pool_size=4, max_overflow=8)
        in_memory = self.in_memory

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: object) -> None:
            dbapi_connection.isolation_level = None  # no implicit transactions: the "begin" hook opens them
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys = ON")
            if not in_memory:
                _use_wal(cursor)
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_IMMEDIATE) else "BEGIN")

        return engine

    def close(self) -> None:
        self._guard.close()
        with self._lock:
            self._engine.dispose()

    @contextmanager
    def _serialised(self, needed: bool) -> Iterator[None]:
        """This process's SQLite lock where ``needed``, waited for no longer than the statement timeout."""
        if not needed:
            yield
            return
        if not self._lock.acquire(timeout=self.timeouts.statement_s):
            raise StoreUnavailableError(f"the control store {self.path} is busy: this process's other writes held "
                                        f"it for more than {self.timeouts.statement_s:g} s; retry shortly")
        try:
            yield
        finally:
            self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _write(self, *, serial: bool = True) -> Iterator[Connection]:
        """One write transaction: committed on success, rolled back on any error.

        SQLite: under this process's lock, begun with ``BEGIN IMMEDIATE`` (one writer across processes).
        PostgreSQL: ``serial`` transactions take the store's advisory lock first (one at a time across
        replicas), so a check and the write it guards see no concurrent change."""
        with self._guard.call(), _refused_values(), self._serialised(self.is_sqlite), \
                self._engine.connect() as conn:
            if self.is_sqlite:
                conn.execution_options(**{_IMMEDIATE: True})
            with conn.begin():
                if serial and not self.is_sqlite:
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for reads (a pooled one; in memory, the one connection under the lock)."""
        with self._guard.call(), _refused_values(), self._serialised(self.in_memory), \
                self._engine.connect() as conn:
            yield conn

    def _driver_read(self, statement: sa.Select[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        """One SELECT straight through the pooled DB-API connection: the statement compiled once for this store's
        database, executed and read without SQLAlchemy's per-execution machinery. For the one read every
        inference request makes (``statement`` must be a module-level constant: compiled forms are kept by its
        id). Values come back as the driver returns them, so only for plain text and integer columns.

        Consistency: SQLite runs it in autocommit mode (the ``connect`` hook), where one statement is its own
        snapshot; on PostgreSQL the driver's implicit transaction is rolled back when the connection returns
        to the pool. Why: this read runs once per inference request, and ``Connection.execute``'s per-execution
        Python costs several times the query itself (more so between requests, when the engine's compute has
        left the CPU caches cold); ``benchmarks/serve_load.py`` measures what HTTP adds per request."""
        found = self._driver_sql.get(id(statement))
        if found is None:
            compiled = statement.compile(dialect=self._engine.dialect)
            found = self._driver_sql[id(statement)] = (str(compiled), compiled)
        sql, compiled = found
        values = compiled.construct_params(params)
        args: Any = [values[name] for name in compiled.positiontup or ()] if compiled.positional else values
        with self._guard.call(), _refused_values(), self._serialised(self.in_memory):
            raw = self._engine.raw_connection()
            try:
                cursor = raw.cursor()
                try:
                    cursor.execute(sql, args)
                    names = [column[0] for column in cursor.description]
                    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
                finally:
                    cursor.close()
            except Exception as exc:
                if is_driver_outage(exc):  # the connection is lost: discarded, not reset into the pool
                    raw.invalidate(exc)
                raise
            finally:
                raw.close()  # back to the pool, which rolls back whatever the driver began

    def _read_all(self, statement: sa.Executable, params: dict[str, Any] | None = None) -> list[sa.RowMapping]:
        with self._read() as conn:
            return list(conn.execute(statement, params or {}).mappings())

    def _read_one(self, statement: sa.Executable) -> sa.RowMapping | None:
        with self._read() as conn:
            return conn.execute(statement).mappings().first()
