"""The control store on real databases (an SQLite file, SQLite :memory:, PostgreSQL): projects, endpoints, keys,
admin tokens."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from e5studio.control.migrations import head
from e5studio.control.store import DEPLOYING, FAILED, LIVE, Endpoint, Project, Store
from e5studio.errors import ConflictError, InputError, NotFoundError

MODEL = "intfloat/e5-large-v2"


@pytest.fixture(params=["file", "memory", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    targets = {"file": lambda: tmp_path / "nested" / "dir" / "control.db", "memory": lambda: ":memory:",
               "postgres": lambda: request.getfixturevalue("pg_store_url")}
    opened = Store(targets[request.param]())
    yield opened
    opened.close()


# -- projects --------------------------------------------------------------------------------------


def test_create_list_and_get_project_by_id_or_name(store: Store) -> None:
    created = store.create_project("search", "knowledge base search")
    other = store.create_project("alpha")
    assert isinstance(created, Project)
    assert len(created.id) == 16 and int(created.id, 16) >= 0
    assert created.created_at.endswith("+00:00")
    assert store.list_projects() == [other, created]  # ordered by name
    assert store.get_project(created.id) == created
    assert store.get_project("search") == created
    assert other.description == ""


def test_missing_project_is_not_found_with_its_name(store: Store) -> None:
    with pytest.raises(NotFoundError, match="project 'nope' not found"):
        store.get_project("nope")
    with pytest.raises(NotFoundError, match="nope"):
        store.create_endpoint("nope", "ep", MODEL, 1)
    with pytest.raises(NotFoundError, match="nope"):
        store.list_endpoints("nope")


def test_duplicate_project_name_conflicts(store: Store) -> None:
    store.create_project("search")
    with pytest.raises(ConflictError, match="search"):
        store.create_project("search")
    assert len(store.list_projects()) == 1


@pytest.mark.parametrize("name", ["", "-lead", ".lead", "has space", "slash/name", "x" * 65, "é"])
def test_bad_names_are_refused_naming_the_rule(store: Store, name: str) -> None:
    with pytest.raises(InputError, match="letters, digits"):
        store.create_project(name)
    project = store.create_project("ok")
    with pytest.raises(InputError, match="letters, digits"):
        store.create_endpoint(project.id, name, MODEL, 1)


@pytest.mark.parametrize("name", ["a", "A1", "my-endpoint_v1.2", "9" + "x" * 63])
def test_good_names_are_accepted(store: Store, name: str) -> None:
    project = store.create_project(name)
    endpoint, _ = store.create_endpoint(project.id, name, MODEL, 1)
    assert endpoint.name == name


# -- endpoints -------------------------------------------------------------------------------------


def test_create_endpoint_returns_endpoint_and_key(store: Store) -> None:
    project = store.create_project("search")
    endpoint, key = store.create_endpoint("search", "live", MODEL, 1, description="chat backend")
    assert isinstance(endpoint, Endpoint)
    assert endpoint.project_id == project.id and endpoint.project_name == "search"
    assert (endpoint.name, endpoint.model, endpoint.batch_size, endpoint.description) == (
        "live",
        MODEL,
        1,
        "chat backend",
    )
    assert endpoint.status == DEPLOYING and endpoint.status_reason == ""
    assert key.startswith("e5s_") and key.startswith(endpoint.key_prefix) and len(endpoint.key_prefix) < 12
    assert store.get_endpoint_by_id(endpoint.id) == endpoint


@pytest.mark.parametrize("batch_size", [1, 32])
def test_allowed_batch_sizes(store: Store, batch_size: int) -> None:
    store.create_project("p")
    endpoint, _ = store.create_endpoint("p", "ep", MODEL, batch_size)
    assert store.get_endpoint("p", "ep").batch_size == batch_size == endpoint.batch_size


@pytest.mark.parametrize("batch_size", [0, 2, 33, -1, 64, True])
def test_other_batch_sizes_are_refused_with_the_reason(store: Store, batch_size: int) -> None:
    store.create_project("p")
    with pytest.raises(InputError) as info:
        store.create_endpoint("p", "ep", MODEL, batch_size)
    message = str(info.value)
    assert "1 or 32" in message and "knowledge base" in message and "live service" in message
    assert store.list_endpoints() == []


def test_empty_model_is_refused(store: Store) -> None:
    store.create_project("p")
    with pytest.raises(InputError, match="model"):
        store.create_endpoint("p", "ep", "  ", 1)


def test_duplicate_endpoint_name_conflicts_only_within_a_project(store: Store) -> None:
    store.create_project("a")
    store.create_project("b")
    store.create_endpoint("a", "ep", MODEL, 1)
    with pytest.raises(ConflictError, match="'ep' already exists in project 'a'"):
        store.create_endpoint("a", "ep", MODEL, 32)
    store.create_endpoint("b", "ep", MODEL, 32)  # same name, other project: fine
    assert len(store.list_endpoints()) == 2


def test_list_and_get_endpoints_by_id_or_name(store: Store) -> None:
    a = store.create_project("a")
    b = store.create_project("b")
    a2, _ = store.create_endpoint("a", "zeta", MODEL, 1)
    a1, _ = store.create_endpoint(a.id, "alpha", MODEL, 32)
    b1, _ = store.create_endpoint("b", "mid", MODEL, 1)
    assert store.list_endpoints() == [a1, a2, b1]
    assert store.list_endpoints("a") == [a1, a2]
    assert store.list_endpoints(b.id) == [b1]
    for project_ref in ("a", a.id):
        for endpoint_ref in ("alpha", a1.id):
            assert store.get_endpoint(project_ref, endpoint_ref) == a1
    with pytest.raises(NotFoundError, match="'mid' not found in project 'a'"):
        store.get_endpoint("a", "mid")
    with pytest.raises(NotFoundError, match="'nope'"):
        store.get_endpoint_by_id("nope")


def test_find_endpoint_by_id_or_unique_name(store: Store) -> None:
    store.create_project("a")
    store.create_project("b")
    only, _ = store.create_endpoint("a", "only", MODEL, 1)
    twin_a, _ = store.create_endpoint("a", "twin", MODEL, 1)
    twin_b, _ = store.create_endpoint("b", "twin", MODEL, 32)
    assert store.find_endpoint("only") == only
    assert store.find_endpoint(only.id) == only
    assert store.find_endpoint(twin_b.id) == twin_b
    with pytest.raises(InputError, match="use the endpoint id") as info:
        store.find_endpoint("twin")
    assert twin_a.id in str(info.value) and twin_b.id in str(info.value)
    with pytest.raises(NotFoundError, match="'ghost' not found"):
        store.find_endpoint("ghost")


def test_endpoint_for_call_reads_what_get_and_find_read(store: Store) -> None:
    """The inference path's one read (straight through the driver) gives the endpoint the SQLAlchemy reads
    give, with its current key hash, for every way a request names it; misses raise the same errors."""
    from e5studio.control.keys import verify_key

    a = store.create_project("a")
    store.create_project("b")
    alpha, key_alpha = store.create_endpoint("a", "alpha", MODEL, 32, precision="int8")
    twin_a, key_twin_a = store.create_endpoint("a", "twin", MODEL, 1)
    twin_b, _ = store.create_endpoint("b", "twin", MODEL, 32)
    store.set_status(alpha.id, LIVE)
    alpha = store.get_endpoint_by_id(alpha.id)
    for project_ref in ("a", a.id):
        for endpoint_ref in ("alpha", alpha.id):
            endpoint, key_hash = store.endpoint_for_call(project_ref, endpoint_ref)
            assert endpoint == alpha and verify_key(key_alpha, key_hash)
    assert store.endpoint_for_call("a", "twin")[0] == twin_a
    assert store.endpoint_for_call(None, alpha.id)[0] == alpha  # bare: id or a unique name
    assert store.endpoint_for_call(None, "alpha")[0] == alpha
    assert store.endpoint_for_call(None, twin_b.id)[0] == twin_b
    with pytest.raises(InputError, match="use the endpoint id"):
        store.endpoint_for_call(None, "twin")
    with pytest.raises(NotFoundError, match="'mid' not found in project 'a'"):
        store.endpoint_for_call("a", "mid")
    with pytest.raises(NotFoundError):
        store.endpoint_for_call("nope", "alpha")
    new_key = store.rotate_key(twin_a.id)  # read fresh: the rotated key at once, never a cached one
    _, key_hash = store.endpoint_for_call("a", "twin")
    assert verify_key(new_key, key_hash) and not verify_key(key_twin_a, key_hash)
    store.delete_endpoint(twin_a.id)
    with pytest.raises(NotFoundError):
        store.endpoint_for_call("a", "twin")
    hostile = "x' OR '1'='1"  # values are bound parameters, never SQL
    with pytest.raises(NotFoundError):
        store.endpoint_for_call("a", hostile)


@pytest.mark.parametrize("ref", ["a\x00b", "\x00", "alpha\n", "", "x" * 65, "\u00e9t\u00e9"])
def test_references_that_could_name_nothing_are_not_found_on_every_backend(store: Store, ref: str) -> None:
    """A reference outside the name rule names nothing: not found, on SQLite and on PostgreSQL alike
    (PostgreSQL refuses NUL in a text parameter; that was a 500 from the inference route's lookup)."""
    store.create_project("a")
    store.create_endpoint("a", "alpha", MODEL, 1)
    with pytest.raises(NotFoundError):
        store.endpoint_for_call(None, ref)
    with pytest.raises(NotFoundError):
        store.endpoint_for_call("a", ref)
    with pytest.raises(NotFoundError):
        store.endpoint_for_call(ref, "alpha")
    for lookup in (store.get_project, store.find_endpoint, store.get_endpoint_by_id, store.get_dataset,
                   store.get_job):
        with pytest.raises(NotFoundError):
            lookup(ref)
    with pytest.raises(NotFoundError):
        store.get_endpoint("a", ref)


def test_a_value_the_database_cannot_hold_is_an_input_error(store: Store) -> None:
    """The backstop under every statement: a NUL character reaching PostgreSQL is the caller's error (400), not
    a crash; SQLite holds it."""
    store.create_project("a")
    endpoint, _ = store.create_endpoint("a", "alpha", MODEL, 1)
    if store.is_sqlite:
        assert store.check_endpoint_key(endpoint.id, "k\x00") is False
    else:
        with pytest.raises(InputError, match="store refused a value"):
            store.update_job("j\x00", status_reason="x")


def test_set_status_and_delete(store: Store) -> None:
    store.create_project("p")
    endpoint, key = store.create_endpoint("p", "ep", MODEL, 1)
    store.set_status(endpoint.id, LIVE)
    assert store.get_endpoint_by_id(endpoint.id).status == LIVE
    store.set_status(endpoint.id, FAILED, "out of GPU memory")
    failed = store.get_endpoint_by_id(endpoint.id)
    assert (failed.status, failed.status_reason) == (FAILED, "out of GPU memory")
    with pytest.raises(InputError, match="status"):
        store.set_status(endpoint.id, "Sleeping")
    with pytest.raises(NotFoundError):
        store.set_status("missing", LIVE)
    store.delete_endpoint(endpoint.id)
    assert store.list_endpoints() == []
    assert not store.check_endpoint_key(endpoint.id, key)
    with pytest.raises(NotFoundError):
        store.delete_endpoint(endpoint.id)
    with pytest.raises(NotFoundError):
        store.get_endpoint_by_id(endpoint.id)
    store.create_endpoint("p", "ep", MODEL, 1)  # the name is free again


# -- keys ------------------------------------------------------------------------------------------


def test_endpoint_keys_are_checked_per_endpoint(store: Store) -> None:
    store.create_project("p")
    one, key_one = store.create_endpoint("p", "one", MODEL, 1)
    two, key_two = store.create_endpoint("p", "two", MODEL, 1)
    assert store.check_endpoint_key(one.id, key_one)
    assert store.check_endpoint_key(two.id, key_two)
    assert not store.check_endpoint_key(one.id, key_two)
    assert not store.check_endpoint_key(two.id, key_one)
    assert not store.check_endpoint_key(one.id, key_one + "x")
    assert not store.check_endpoint_key(one.id, "")
    assert not store.check_endpoint_key("missing", key_one)


def test_rotate_key_invalidates_the_old_key(store: Store) -> None:
    store.create_project("p")
    endpoint, old = store.create_endpoint("p", "ep", MODEL, 1)
    new = store.rotate_key(endpoint.id)
    assert new != old
    assert store.check_endpoint_key(endpoint.id, new)
    assert not store.check_endpoint_key(endpoint.id, old)
    assert store.get_endpoint_by_id(endpoint.id).key_prefix == new[: len(endpoint.key_prefix)]
    with pytest.raises(NotFoundError):
        store.rotate_key("missing")


def test_admin_token_created_once_and_returned_once(store: Store) -> None:
    assert not store.check_admin_token("anything")
    token = store.ensure_admin_token()
    assert token is not None
    assert store.ensure_admin_token() is None
    assert store.check_admin_token(token)
    assert not store.check_admin_token(token + "x")
    rotated = store.rotate_admin_token()
    assert rotated != token
    assert store.check_admin_token(rotated)
    assert not store.check_admin_token(token)
    assert store.ensure_admin_token() is None


def _windows(secret: str, width: int = 12) -> list[str]:
    """Every substring of ``width`` characters: any longer substring contains one of them."""
    return [secret[i : i + width] for i in range(len(secret) - width + 1)]


def test_plain_keys_and_tokens_are_never_stored(store_target: str, tmp_path: Path) -> None:
    store = Store(store_target)
    store.create_project("p")
    secrets_given: list[str] = []
    for name in ("one", "two"):
        endpoint, key = store.create_endpoint("p", name, MODEL, 1)
        secrets_given += [key, store.rotate_key(endpoint.id)]
    admin = store.ensure_admin_token()
    assert admin is not None
    secrets_given += [admin, store.rotate_admin_token()]
    store.close()

    engine = sa.create_engine(Store.open(store_target).url)  # every table, as the database holds it
    with engine.connect() as conn:
        tables = sa.inspect(conn).get_table_names()
        assert {"projects", "endpoints", "admin_tokens", "alembic_version"} <= set(tables)
        values = [str(value) for table in tables for row in conn.exec_driver_sql(f'SELECT * FROM "{table}"')
                  for value in row]
    engine.dispose()
    files = list((tmp_path / "data").glob("e5studio.db*")) if "://" not in store_target else []
    raw = b"".join(p.read_bytes() for p in files)
    for secret in secrets_given:
        for window in _windows(secret):
            assert not any(window in value for value in values), window
            assert window.encode() not in raw, window


# -- durability and concurrency --------------------------------------------------------------------


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "control.db"
    with Store(path) as store:
        project = store.create_project("p", "kept")
        endpoint, key = store.create_endpoint("p", "ep", MODEL, 32)
        store.set_status(endpoint.id, LIVE)
        token = store.ensure_admin_token()
    assert token is not None
    with Store(path) as store:
        assert store.list_projects() == [project]
        reopened = store.get_endpoint("p", "ep")
        assert reopened.status == LIVE and reopened.batch_size == 32
        assert store.check_endpoint_key(endpoint.id, key)
        assert store.check_admin_token(token)
        assert store.ensure_admin_token() is None


def test_foreign_keys_are_enforced(store: Store) -> None:
    # reach the connection only to prove the schema rejects an endpoint of a missing project
    with pytest.raises(sa.exc.IntegrityError), store._write() as conn:
        conn.exec_driver_sql(
            "INSERT INTO endpoints (id, project_id, name, model, batch_size, created_at, status, key_hash,"
            " key_prefix) VALUES ('x', 'missing', 'n', 'm', 1, 't', 'Deploying', 'h', 'p')"
        )


def _run_threads(target: object, count: int) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            barrier.wait()
            target(index)  # type: ignore[operator]
        except BaseException as exc:  # collected and asserted on in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_eight_threads_share_one_store(store: Store) -> None:
    store.create_project("p")
    keys: dict[str, str] = {}

    def work(index: int) -> None:
        for j in range(10):
            endpoint, key = store.create_endpoint("p", f"ep-{index}-{j}", MODEL, 1 if j % 2 else 32)
            keys[endpoint.id] = key
            store.set_status(endpoint.id, LIVE)
            assert store.check_endpoint_key(endpoint.id, key)
            store.list_endpoints("p")

    assert _run_threads(work, 8) == []
    endpoints = store.list_endpoints("p")
    assert len(endpoints) == len(keys) == 80
    assert all(e.status == LIVE for e in endpoints)
    assert all(store.check_endpoint_key(endpoint_id, key) for endpoint_id, key in keys.items())


def test_eight_threads_racing_for_one_name_give_one_winner(store: Store) -> None:
    store.create_project("p")
    errors = _run_threads(lambda index: store.create_endpoint("p", "same", MODEL, 1), 8)
    assert len(errors) == 7 and all(isinstance(e, ConflictError) for e in errors)
    assert [e.name for e in store.list_endpoints()] == ["same"]


def test_eight_stores_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "control.db"

    def work(index: int) -> None:
        with Store(path) as own:
            if index == 0:
                own.create_project("p")
            for j in range(5):
                try:
                    own.create_endpoint("p", f"ep-{index}-{j}", MODEL, 1)
                except NotFoundError:  # project not created yet by thread 0
                    own.create_project(f"p{index}-{j}")

    assert _run_threads(work, 8) == []
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head(),)]
    conn.close()
    with Store(path) as store:
        assert len(store.list_endpoints()) + len(store.list_projects()) == 8 * 5 + 1
