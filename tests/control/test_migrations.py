"""Schema migrations (Alembic, one history for SQLite and PostgreSQL): applied once, in one transaction with their
record, the same schema as the store's tables; stores made before Alembic upgrade in place with their data; a
store migrated by a newer e5studio is refused (by the store, `e5studio store` and `e5studio serve`)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from e5studio.cli import main
from e5studio.control.keys import hash_key
from e5studio.control.migrations import HEAD_REVISION, LEGACY_NAMES, head, revisions
from e5studio.control.schema import metadata
from e5studio.control.store import LIVE, Store
from e5studio.errors import SchemaError
from tests.conftest import PostgresDatabases
from tests.control.legacy_store import MIGRATIONS as LEGACY_MIGRATIONS
from tests.control.legacy_store import make_legacy_store

NEW_TABLES = {"web_sessions", "login_failures", "replicas"}


def _versions(url: sa.URL | str) -> list[str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = [row[0] for row in conn.exec_driver_sql("SELECT version_num FROM alembic_version")]
    engine.dispose()
    return found


def _tables(url: sa.URL | str) -> set[str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    return found


def test_revisions_are_one_named_line_that_begins_with_the_legacy_names() -> None:
    assert revisions()[:len(LEGACY_NAMES)] == list(LEGACY_NAMES) == [name for name, _ in LEGACY_MIGRATIONS]
    assert revisions()[len(LEGACY_NAMES):] == ["0006_web_sessions", "0007_login_failures", "0008_job_leases",
                                              "0009_replicas", "0010_knowledge_bases"]
    assert head() == revisions()[-1] == HEAD_REVISION  # the fast path's constant follows the newest revision
    assert all(len(name) <= 32 for name in revisions())  # alembic_version.version_num is VARCHAR(32)


@pytest.fixture(params=["sqlite", "postgres"])
def empty_store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a new, empty store goes: an SQLite file, or an empty PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "data" / "e5studio.db")
        return
    databases: PostgresDatabases = request.getfixturevalue("pg_databases")
    url = databases.fresh()
    yield url
    databases.drop(url)


def test_a_new_store_applies_every_revision_once_and_records_the_head(empty_store_target: str) -> None:
    store_target = empty_store_target
    with Store(store_target) as store:
        assert store.applied_migrations == revisions()
        assert _versions(store.url) == [head()]
        state = store.schema_state()
        assert (state.current, state.head, state.pending) == (head(), head(), [])
    with Store(store_target) as again:  # reopening applies nothing
        assert again.applied_migrations == []
        assert _versions(again.url) == [head()]


def test_the_migrations_build_exactly_the_tables_the_store_writes(store_target: str) -> None:
    """Alembic's autogenerate comparison of the migrated database with ``control/schema.py`` finds nothing."""
    with Store(store_target) as store:
        engine = sa.create_engine(store.url)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert differences == []


def _legacy_with_data(path: Path, upto: int = len(LEGACY_MIGRATIONS)) -> dict[str, str]:
    """An old-format store with a project, an endpoint and its key, an admin token, a dataset and a job."""
    make_legacy_store(path, upto)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO projects VALUES ('p1', 'search', 'old', '2024-01-01T00:00:00+00:00')")
    conn.execute("INSERT INTO endpoints (id, project_id, name, description, model, batch_size, created_at, status,"
                 " status_reason, key_hash, key_prefix) VALUES ('e1', 'p1', 'kb', '', 'intfloat/e5-large-v2', 32,"
                 " '2024-01-01T00:00:01+00:00', 'Live', '', ?, 'e5s_old0')", (hash_key("e5s_the-old-key"),))
    conn.execute("INSERT INTO admin_tokens VALUES ('t1', ?, '2024-01-01T00:00:00+00:00')",
                 (hash_key("e5sadm_old-token"),))
    if upto >= 2:
        conn.execute("INSERT INTO datasets VALUES ('d1', 'scifact', 1, '/data/scifact', '', 10, 4, 5, 12, 'p', 't',"
                     " NULL, '2024-01-02T00:00:00+00:00')")
        conn.execute("INSERT INTO jobs (id, kind, dataset_id, model, output, params, status, created_at, updated_at)"
                     " VALUES ('j1', 'train', 'd1', 'm', '/out', '{\"epochs\": 1}', 'Succeeded',"
                     " '2024-01-02T00:00:00+00:00', '2024-01-02T01:00:00+00:00')")
    conn.close()
    return {"key": "e5s_the-old-key", "token": "e5sadm_old-token"}


@pytest.mark.parametrize("upto", [len(LEGACY_MIGRATIONS), 3])
def test_a_store_made_before_alembic_upgrades_in_place_with_its_data(tmp_path: Path, upto: int) -> None:
    path = tmp_path / "e5studio.db"
    secrets = _legacy_with_data(path, upto)
    with Store(path) as store:
        assert store.applied_migrations == revisions()[upto:]  # stamped at its newest old name, upgraded from there
        assert _versions(store.url) == [head()]
        assert _tables(store.url) >= NEW_TABLES and "_migrations" in _tables(store.url)  # the old record is kept
        endpoint = store.get_endpoint("search", "kb")
        assert (endpoint.status, endpoint.key_prefix, endpoint.precision, endpoint.deploy_gate) == (
            LIVE, "e5s_old0", "fp32", "")
        assert store.check_endpoint_key("e1", secrets["key"]) and store.check_admin_token(secrets["token"])
        job = store.get_job("j1")
        assert (job.status, job.params, job.owner, job.lease_owner, job.lease_expires_at) == (
            "Succeeded", {"epochs": 1}, "", "", None)
        assert store.get_dataset("scifact@1").passages == 10
        store.create_endpoint("search", "new", "m", 1)  # and it is writable as any store
    with Store(path) as again:
        assert again.applied_migrations == [] and len(again.list_endpoints()) == 2


def test_an_old_record_with_unknown_names_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e5studio.db"
    make_legacy_store(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO _migrations VALUES ('0006_from_a_fork', 'x')")
    conn.close()
    with pytest.raises(SchemaError, match="0006_from_a_fork"):
        Store(path)


def test_a_failing_migration_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    """Every pending revision and its record is one transaction: a failure in the second leaves not even the first."""
    path = tmp_path / "e5studio.db"
    _legacy_with_data(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE login_failures (x INTEGER)")  # 0007 will clash with this
    conn.close()
    with pytest.raises(sa.exc.OperationalError, match="login_failures"):
        Store(path)
    conn = sqlite3.connect(path)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "web_sessions" not in tables and "alembic_version" not in tables  # 0006 rolled back, nothing stamped
    assert len(conn.execute("SELECT * FROM _migrations").fetchall()) == len(LEGACY_MIGRATIONS)
    conn.execute("DROP TABLE login_failures")
    conn.commit()
    conn.close()
    with Store(path) as store:  # with the clash gone, the same upgrade goes through
        assert store.applied_migrations == revisions()[len(LEGACY_NAMES):]


def _stamp_future(url: sa.URL | str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0042_from_the_future'")
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def own_store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated store that the test may change the schema of."""
    if request.param == "sqlite":
        return str(tmp_path / "data" / "e5studio.db")
    return str(request.getfixturevalue("pg_own_store_url"))


def test_a_store_migrated_by_a_newer_e5studio_is_refused(own_store_target: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    store_target = own_store_target
    with Store(store_target) as store:
        url = store.url
    _stamp_future(url)
    for migrate in (True, False):
        with pytest.raises(SchemaError, match="'0042_from_the_future', newer than this e5studio knows"):
            Store.open(store_target, migrate=migrate)
    assert _versions(url) == ["0042_from_the_future"]  # nothing was touched
    flags = ["--store", store_target, "--data-dir", str(tmp_path / "unused")]
    for argv in (["store", "migrate", *flags], ["store", "status", *flags], ["admin-token", *flags],
                 ["serve", "--model", "all-minilm-l6-v2", "--port", "1", *flags]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "e5studio: error: the control store's schema is at revision '0042_from_the_future'" in err, argv
        assert "Traceback" not in err


def test_store_migrate_and_status_say_what_they_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _legacy_with_data(data_dir / "e5studio.db")
    assert main(["store", "status", "--data-dir", str(data_dir)]) == 1
    out = capsys.readouterr().out
    assert "revision 0005_endpoint_deploy_gate" in out and f"pending: {', '.join(revisions()[5:])}" in out
    assert main(["store", "migrate", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("applied ")] == [
        f"applied {name}" for name in revisions()[5:]]
    assert f"is now at revision {head()}" in out
    assert main(["store", "migrate", "--data-dir", str(data_dir)]) == 0
    assert f"is at revision {head()} (the newest this e5studio knows)" in capsys.readouterr().out
    assert main(["store", "status", "--data-dir", str(data_dir)]) == 0


def test_store_urls_postgres_and_sqlite_forms(tmp_path: Path) -> None:
    from e5studio.control.database import make_safe, store_url

    assert store_url("postgres://u:secret@db.example:5433/e5").render_as_string(hide_password=False) == (
        "postgresql+psycopg://u:secret@db.example:5433/e5")
    assert store_url("postgresql://u@h/e5").drivername == "postgresql+psycopg"
    assert store_url(tmp_path / "x.db").database == str(tmp_path / "x.db")
    assert store_url(f"sqlite:///{tmp_path}/y.db").database == f"{tmp_path}/y.db"
    assert make_safe("postgres://u:secret@h/db") == "postgres://u:***@h/db"
    from e5studio.errors import InputError

    with pytest.raises(InputError, match="unsupported store URL 'mysql://u:\\*\\*\\*@h/db'"):
        store_url("mysql://u:pw@h/db")


def test_eight_servers_opening_a_new_postgres_store_at_once_migrate_it_once(pg_databases: PostgresDatabases) -> None:
    url = pg_databases.fresh()
    applied: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def open_store() -> None:
        try:
            barrier.wait()
            with Store(url) as store:
                applied.append(store.applied_migrations)
        except BaseException as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(applied, key=len) == [[]] * 7 + [revisions()]
    assert _versions(url) == [head()]
    pg_databases.drop(url)
