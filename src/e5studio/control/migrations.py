"""Schema migrations of the control store: one Alembic history (``alembic/versions/``) for SQLite and
PostgreSQL alike, run programmatically (no ``alembic.ini`` needed).

:func:`upgrade` applies every revision the store lacks in **one** transaction together with Alembic's record
of them (``alembic_version``), so a migration that fails leaves the store exactly as it was. The transaction
is exclusive (SQLite ``BEGIN IMMEDIATE``; a PostgreSQL advisory lock), so two servers opening the same store
at once apply nothing twice. A store whose recorded revision this code does not know (written by a newer
e5studio) is refused (:class:`~e5studio.errors.SchemaError`); nothing is changed.

Stores made before Alembic recorded their migrations by name in ``_migrations`` (0001..0005, the sqlite-utils
pattern); the revisions keep those names, so such a store is stamped at its newest recorded name and upgraded
from there, in place, with its data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from e5studio.errors import SchemaError

if TYPE_CHECKING:  # Alembic is imported only where a store needs migrating (opening a current store needs none)
    from alembic.config import Config
    from alembic.script import ScriptDirectory

SCRIPT_DIR = Path(__file__).resolve().parent / "alembic"
LEGACY_TABLE = "_migrations"  # the named-migration record of stores made before Alembic
LEGACY_NAMES = ("0001_projects_endpoints_keys", "0002_datasets_jobs", "0003_job_processes", "0004_endpoint_precision",
                "0005_endpoint_deploy_gate")
MIGRATION_LOCK_KEY = int.from_bytes(b"e5s-migr", "big")  # pg_advisory_xact_lock key while migrating
# the newest revision in alembic/versions (tests/control/test_migrations.py checks): a store recorded at it opens
# with one query, without Alembic
HEAD_REVISION = "0010_knowledge_bases"
VERSION_TABLE = "alembic_version"


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_DIR))
    config.attributes["connection"] = connection
    return config


def script_directory() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def revisions() -> list[str]:
    """Every revision this code knows, oldest first."""
    return [rev.revision for rev in reversed(list(script_directory().walk_revisions()))]


def head() -> str:
    """The newest revision this code knows."""
    current = script_directory().get_current_head()
    assert current is not None
    return current


@dataclass(frozen=True)
class SchemaState:
    """Where a store stands: its recorded revision (None: empty or legacy-only), this code's head, and the
    revisions an upgrade would apply."""

    current: str | None
    head: str
    pending: list[str]
    legacy: bool  # recorded only in the old ``_migrations`` table so far


def _tables(conn: Connection) -> set[str]:
    return set(sa.inspect(conn).get_table_names())


def _legacy_revision(conn: Connection) -> str | None:
    """The newest name recorded in ``_migrations`` (stores made before Alembic), checked against the known names."""
    names = [row[0] for row in conn.execute(sa.text(f"SELECT name FROM {LEGACY_TABLE}"))]
    if not names:
        return None
    unknown = sorted(set(names) - set(LEGACY_NAMES))
    if unknown:
        raise SchemaError(f"the control store records migrations this e5studio does not know ({', '.join(unknown)}); "
                          "it was written by another version: use that version, or a matching newer one")
    ordered = [name for name in LEGACY_NAMES if name in names]
    if ordered != list(LEGACY_NAMES[:len(ordered)]):
        raise SchemaError(f"the control store's migration record {LEGACY_TABLE} has gaps ({', '.join(ordered)}); "
                          "it cannot be upgraded automatically")
    return ordered[-1]


def _recorded(conn: Connection) -> list[str] | None:
    """The revisions recorded in the version table (None: no version table)."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    return [row[0] for row in conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))]


def _state(conn: Connection) -> SchemaState:
    known = revisions()
    tables = _tables(conn)
    current_heads = tuple(_recorded(conn) or ()) if VERSION_TABLE in tables else ()
    legacy = False
    if len(current_heads) > 1:
        raise SchemaError(f"the control store records several schema heads {current_heads}; it was migrated by "
                          "a branched history this e5studio does not know")
    current = current_heads[0] if current_heads else None
    if current is None and LEGACY_TABLE in tables:
        current, legacy = _legacy_revision(conn), True
    if current is not None and current not in known:
        raise SchemaError(
            f"the control store's schema is at revision {current!r}, newer than this e5studio knows (its newest is "
            f"{known[-1]!r}): it was migrated by a newer e5studio; run that version (or upgrade this one)")
    start = 0 if current is None else known.index(current) + 1
    return SchemaState(current=current, head=known[-1], pending=known[start:], legacy=legacy)


def _locked(conn: Connection) -> None:
    """Make the open transaction the only migrating one (SQLite: it began with BEGIN IMMEDIATE already)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def _begin_exclusive(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        conn.execution_options(e5studio_immediate=True)  # the store's "begin" hook: BEGIN IMMEDIATE


def schema_state(engine: Engine) -> SchemaState:
    """Where the store at ``engine`` stands (nothing is changed); SchemaError for a newer or unknown schema."""
    with engine.connect() as conn, conn.begin():
        return _state(conn)


def upgrade(engine: Engine, *, apply: bool = True) -> list[str]:
    """Apply the revisions the store lacks (all in one exclusive transaction); return their names.

    ``apply=False`` only checks that this code can use the store (SchemaError otherwise) and applies nothing.
    """
    with engine.connect() as conn, conn.begin():  # the usual case: the store is at this code's head
        if _recorded(conn) == [HEAD_REVISION]:
            return []
    from alembic import command

    with engine.connect() as conn:
        _begin_exclusive(conn)
        with conn.begin():
            if apply:
                _locked(conn)
            state = _state(conn)
            if not apply or not state.pending and not state.legacy:
                return []
            config = _config(conn)
            if state.legacy and state.current is not None:
                command.stamp(config, state.current)
            if state.pending:
                command.upgrade(config, "head")
            return state.pending
