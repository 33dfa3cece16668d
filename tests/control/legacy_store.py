"""Stores as e5studio wrote them before Alembic: the five named migrations (raw SQLite SQL) recorded in
``_migrations``, exactly as ``control/migrations.py`` applied them until revision 0005 (test data: the upgrade
in place of such stores is tested against it)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

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


def make_legacy_store(path: Path, upto: int = len(MIGRATIONS)) -> None:
    """An SQLite store at ``path`` with the first ``upto`` old migrations applied and recorded (the old way)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    for name, script in MIGRATIONS[:upto]:
        conn.execute("BEGIN IMMEDIATE")
        for statement in _statements(script):
            conn.execute(statement)
        conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                     (name, datetime.now(UTC).isoformat()))
        conn.execute("COMMIT")
    conn.close()


def _statements(script: str) -> list[str]:
    statements, buffer = [], ""
    for part in script.split(";"):
        buffer += part + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\r\n;"):
                statements.append(buffer.strip())
            buffer = ""
    return statements
