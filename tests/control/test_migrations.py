"""Named migrations: applied once, recorded, atomic with their record, nothing applied twice."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

import pytest

from e5studio.control.migrations import MIGRATIONS, applied_migrations, apply_migrations, split_statements
from e5studio.control.store import Store
from e5studio.errors import E5StudioError


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _records(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return [tuple(row) for row in conn.execute("SELECT name, applied_at FROM _migrations ORDER BY rowid")]


def test_first_migration_is_named_and_list_is_plain() -> None:
    assert isinstance(MIGRATIONS, list)
    assert MIGRATIONS[0][0] == "0001_projects_endpoints_keys"


def test_store_applies_every_migration_once_and_records_it(tmp_path: Path) -> None:
    path = tmp_path / "control.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    assert [name for name, _ in _records(conn)] == [name for name, _ in MIGRATIONS]
    assert {"projects", "endpoints", "admin_tokens", "_migrations"} <= _tables(conn)
    assert apply_migrations(conn) == []
    conn.close()


def test_reopening_a_file_applies_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "control.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    before = _records(conn)
    conn.close()
    Store(path).close()
    Store(path).close()
    conn = sqlite3.connect(path)
    assert _records(conn) == before
    conn.close()


def test_memory_connection_applies_and_returns_names() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    assert apply_migrations(conn) == [name for name, _ in MIGRATIONS]
    assert applied_migrations(conn) == [name for name, _ in MIGRATIONS]
    assert apply_migrations(conn) == []


def test_legacy_transaction_mode_connection_works() -> None:
    conn = sqlite3.connect(":memory:")  # Python's default implicit-transaction mode
    assert apply_migrations(conn) == [name for name, _ in MIGRATIONS]
    assert not conn.in_transaction


@pytest.mark.parametrize("isolation_level", [None, "DEFERRED"])
def test_failing_migration_leaves_neither_tables_nor_record(
    tmp_path: Path, isolation_level: Literal["DEFERRED"] | None
) -> None:
    path = tmp_path / "broken.db"
    migrations = [
        ("0001_ok", "CREATE TABLE first (x INTEGER);"),
        (
            "0002_broken",
            "CREATE TABLE second (x INTEGER); CREATE INDEX second_x ON second(x);"
            " INSERT INTO second VALUES (1); INSERT INTO no_such_table VALUES (1);",
        ),
        ("0003_never", "CREATE TABLE third (x INTEGER);"),
    ]
    conn = sqlite3.connect(path, isolation_level=isolation_level)
    with pytest.raises(E5StudioError, match="0002_broken"):
        apply_migrations(conn, migrations)
    assert not conn.in_transaction
    conn.close()

    conn = sqlite3.connect(path)
    assert _tables(conn) == {"_migrations", "first"}
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'second_x'").fetchone() is None
    assert [name for name, _ in _records(conn)] == ["0001_ok"]
    conn.close()

    # fixing the migration lets the next run apply it and the ones after it
    fixed = [migrations[0], ("0002_broken", "CREATE TABLE second (x INTEGER);"), migrations[2]]
    conn = sqlite3.connect(path, isolation_level=None)
    assert apply_migrations(conn, fixed) == ["0002_broken", "0003_never"]
    assert _tables(conn) == {"_migrations", "first", "second", "third"}
    conn.close()


def test_duplicate_migration_names_are_refused() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    with pytest.raises(E5StudioError, match="unique"):
        apply_migrations(conn, [("a", "CREATE TABLE a (x);"), ("a", "CREATE TABLE b (x);")])


def test_connection_inside_a_transaction_is_refused() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("BEGIN")
    with pytest.raises(E5StudioError, match="transaction"):
        apply_migrations(conn)


def test_split_statements_keeps_semicolons_inside_strings_and_triggers() -> None:
    script = """
        CREATE TABLE t (x TEXT);
        INSERT INTO t VALUES ('a;b');
        CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN UPDATE t SET x = x || ';'; END;
    """
    statements = split_statements(script)
    assert len(statements) == 3
    assert statements[1] == "INSERT INTO t VALUES ('a;b');"
    with pytest.raises(E5StudioError, match="incomplete"):
        split_statements("CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('unterminated")
