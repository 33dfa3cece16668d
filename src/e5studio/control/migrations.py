"""Named schema migrations, each applied in one transaction together with its record.

``MIGRATIONS`` is a plain ordered list of ``(name, sql_script)``; later features append to it and never
edit an applied entry. :func:`apply_migrations` records every applied name in ``_migrations`` inside
the same transaction as the migration's own statements, so a migration that fails midway leaves
neither its tables nor its record (the sqlite-utils ``migrations.py`` pattern).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timezone

from e5studio.errors import E5StudioError

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_projects_endpoints_keys",
        """
        CREATE TABLE projects (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL UNIQUE,
            description TEXT NOT NULL DEFAULT '',
            created_at  TEXT NOT NULL
        );
        CREATE TABLE endpoints (
            id            TEXT PRIMARY KEY,
            project_id    TEXT NOT NULL REFERENCES projects(id),
            name          TEXT NOT NULL,
            description   TEXT NOT NULL DEFAULT '',
            model         TEXT NOT NULL,
            batch_size    INTEGER NOT NULL CHECK (batch_size IN (1, 32)),
            created_at    TEXT NOT NULL,
            status        TEXT NOT NULL,
            status_reason TEXT NOT NULL DEFAULT '',
            key_hash      TEXT NOT NULL,
            key_prefix    TEXT NOT NULL,
            UNIQUE (project_id, name)
        );
        CREATE INDEX endpoints_by_name ON endpoints(name);
        CREATE TABLE admin_tokens (
            id         TEXT PRIMARY KEY,
            token_hash TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        """,
    ),
    (
        "0002_datasets_jobs",
        """
        CREATE TABLE datasets (
            id              TEXT PRIMARY KEY,
            name            TEXT NOT NULL,
            version         INTEGER NOT NULL CHECK (version >= 1),
            path            TEXT NOT NULL,
            description     TEXT NOT NULL DEFAULT '',
            passages        INTEGER NOT NULL,
            queries         INTEGER NOT NULL,
            positives       INTEGER NOT NULL,
            negatives       INTEGER NOT NULL,
            passages_sha256 TEXT NOT NULL,
            train_sha256    TEXT NOT NULL,
            parent_id       TEXT REFERENCES datasets(id),
            created_at      TEXT NOT NULL,
            UNIQUE (name, version)
        );
        CREATE TABLE jobs (
            id            TEXT PRIMARY KEY,
            kind          TEXT NOT NULL,
            dataset_id    TEXT REFERENCES datasets(id),
            model         TEXT NOT NULL,
            output        TEXT NOT NULL,
            params        TEXT NOT NULL DEFAULT '{}',
            status        TEXT NOT NULL,
            status_reason TEXT NOT NULL DEFAULT '',
            step          INTEGER NOT NULL DEFAULT 0,
            total_steps   INTEGER NOT NULL DEFAULT 0,
            metrics       TEXT NOT NULL DEFAULT '{}',
            created_at    TEXT NOT NULL,
            updated_at    TEXT NOT NULL
        );
        CREATE INDEX jobs_by_output ON jobs(output);
        """,
    ),
    (
        "0003_job_processes",
        """
        ALTER TABLE jobs ADD COLUMN pid INTEGER;
        ALTER TABLE jobs ADD COLUMN log_path TEXT NOT NULL DEFAULT '';
        ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
        ALTER TABLE jobs ADD COLUMN runner_id TEXT NOT NULL DEFAULT '';
        ALTER TABLE jobs ADD COLUMN runner_pid INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX jobs_by_status ON jobs(status);
        """,
    ),
    (
        "0004_endpoint_precision",
        """
        ALTER TABLE endpoints ADD COLUMN precision TEXT NOT NULL DEFAULT 'fp32';
        """,
    ),
    (
        "0005_endpoint_deploy_gate",
        """
        ALTER TABLE endpoints ADD COLUMN deploy_gate TEXT NOT NULL DEFAULT '';
        """,
    ),
]

_RECORD_TABLE = "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"


def split_statements(script: str) -> list[str]:
    """Split an SQL script into complete statements (semicolons inside strings and triggers kept)."""
    statements: list[str] = []
    buffer = ""
    for part in script.split(";"):
        buffer += part + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\r\n;"):
                statements.append(buffer.strip())
            buffer = ""
    leftover = buffer[:-1].strip()  # the loop added one ';' after the last part
    if leftover:
        raise E5StudioError(f"incomplete SQL statement at the end of a migration: {leftover[:80]!r}")
    return statements


def applied_migrations(conn: sqlite3.Connection) -> list[str]:
    """Names recorded in ``_migrations``, oldest first (empty when the table does not exist yet)."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'").fetchone()
    if exists is None:
        return []
    return [row[0] for row in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]


def apply_migrations(conn: sqlite3.Connection, migrations: Sequence[tuple[str, str]] = MIGRATIONS) -> list[str]:
    """Apply each migration not yet recorded, in order; return the names applied by this call.

    Every migration runs in its own ``BEGIN IMMEDIATE`` transaction with the insert of its record, and
    the "already applied?" check happens inside that transaction, so two processes opening the same
    file apply nothing twice. On failure the transaction is rolled back and an :class:`E5StudioError`
    names the migration; migrations before it stay applied. ``conn`` must not be inside a transaction.
    """
    names = [name for name, _ in migrations]
    if len(set(names)) != len(names):
        raise E5StudioError(f"migration names must be unique: {names}")
    if conn.in_transaction:
        raise E5StudioError("apply_migrations needs a connection that is not inside a transaction")
    conn.execute(_RECORD_TABLE)
    if conn.in_transaction:  # a connection in Python's legacy transaction mode may have opened one
        conn.execute("COMMIT")
    applied: list[str] = []
    for name, script in migrations:
        statements = split_statements(script)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone() is None:
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                    (name, datetime.now(timezone.utc).isoformat()),
                )
                applied.append(name)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise E5StudioError(f"migration {name!r} failed and was rolled back: {exc}") from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return applied
