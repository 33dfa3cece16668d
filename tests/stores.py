"""Which database the control stores of this test run live on.

By default each test's store is the SQLite file of its data directory (what ``e5studio serve`` makes). With
``E5STUDIO_TEST_STORE=postgres`` (``make test-postgres``) every store a test makes through :func:`store_for` is a
PostgreSQL database of its own on the session's server (``postgres_url`` in ``tests/conftest.py``): the servers
started by the tests (``tests/serving/server.py``), the in-process apps, the CLI processes they run, and the
store-level tests' ``store_target``. Tests about SQLite itself (its files, their modes) keep their SQLite files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from e5studio.control.store import Store

TEST_STORE_ENV = "E5STUDIO_TEST_STORE"
KINDS = ("sqlite", "postgres")
KIND = os.environ.get(TEST_STORE_ENV, "sqlite") or "sqlite"
if KIND not in KINDS:
    raise RuntimeError(f"{TEST_STORE_ENV} must be one of {', '.join(KINDS)}, got {KIND!r}")

_new_database: Callable[[], str] | None = None
_by_dir: dict[Path, str] = {}


def on_postgres() -> bool:
    return KIND == "postgres"


def use_postgres(new_database: Callable[[], str]) -> None:
    """Called once by the session fixture when the run is on PostgreSQL: how to make an empty database."""
    global _new_database
    _new_database = new_database


def store_for(data_dir: Path) -> str:
    """The control store of ``data_dir``: its SQLite file, or on PostgreSQL runs an empty database of its own
    (the same one for every call with the same directory, so a restarted server finds its store again)."""
    if not on_postgres():
        return str(data_dir / "e5studio.db")
    key = Path(data_dir).resolve()
    if key not in _by_dir:
        assert _new_database is not None, "the PostgreSQL session fixture has not run"
        _by_dir[key] = _new_database()
    return _by_dir[key]


def store_env(data_dir: Path) -> dict[str, str]:
    """Environment for an e5studio process working on ``data_dir``: ``E5STUDIO_STORE`` on PostgreSQL runs."""
    return {"E5STUDIO_STORE": store_for(data_dir)} if on_postgres() else {}


def opened_store(request: Any, sqlite_target: str | Path) -> Iterator[Store]:
    """A store for a fixture parametrised by database: ``request.param`` "postgres" is a migrated database of
    its own on the session's server (dropped afterwards), anything else the SQLite store at ``sqlite_target``.
    Fixtures ``yield from`` it."""
    from e5studio.control.store import Store

    if request.param != "postgres":
        with Store(sqlite_target) as store:
            yield store
        return
    databases = request.getfixturevalue("pg_databases")
    url = databases.migrated()
    with Store(url) as store:
        yield store
    databases.drop(url)


def dump(url: str) -> bytes:
    """Every row of every table of the PostgreSQL store at ``url``, as text (to search it for secrets)."""
    from e5studio.control.schema import metadata

    engine = sa.create_engine(sa.make_url(url).set(drivername="postgresql+psycopg"), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            lines = [f"{table.name}: {tuple(row)!r}" for table in metadata.sorted_tables
                     for row in conn.execute(sa.select(table))]
    finally:
        engine.dispose()
    return "\n".join(lines).encode("utf-8")
