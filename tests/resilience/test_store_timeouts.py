"""Issue 25, point 1: every call to the control store is bounded. A PostgreSQL server that stops answering (its
processes stopped, or a partition: the proxy holds every byte) or that is killed (connections reset, new ones
refused) makes store calls raise StoreUnavailableError within the bounds, never hang; once the store is known to
be away, calls fail at once; when it answers again, calls succeed without a restart. SQLite: a write lock held by
another process past the busy timeout is the same error, naming the file."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from e5studio.control.store import Store
from e5studio.errors import StoreUnavailableError
from e5studio.settings import StoreTimeouts
from tests.resilience.proxy import PgProxy

TIMEOUTS = StoreTimeouts(connect_s=2.0, statement_s=1.5, checkout_s=1.0)
BOUND_S = TIMEOUTS.connect_s + TIMEOUTS.statement_s + TIMEOUTS.checkout_s  # the documented worst case
SLACK_S = 1.0  # a busy machine's scheduling


@pytest.fixture
def proxied(pg_own_store_url: str, pg_proxy: PgProxy) -> Iterator[Store]:
    store = Store.open(pg_proxy.url(pg_own_store_url), timeouts=TIMEOUTS)
    store.create_project("p")
    store.create_endpoint("p", "e", "model-x", 32)
    yield store
    store.close()


def timed(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    start = time.monotonic()
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the test looks at it
        return exc, time.monotonic() - start
    return None, time.monotonic() - start


def until_answers(call: Callable[[], object], timeout: float) -> float:
    """Seconds until ``call`` succeeds (AssertionError after ``timeout``)."""
    start = time.monotonic()
    while True:
        try:
            call()
            return time.monotonic() - start
        except StoreUnavailableError:
            if time.monotonic() - start > timeout:
                raise AssertionError(f"the store did not answer again within {timeout} s") from None
            time.sleep(0.05)


CALLS: dict[str, Callable[[Store], object]] = {
    "read": lambda s: s.list_projects(),
    "inference lookup": lambda s: s.endpoint_for_call("p", "e"),  # the raw driver read of every request
    "serial write": lambda s: s.create_project(f"q{time.monotonic_ns()}"),
    "heartbeat": lambda s: s.heartbeat_replica("r1", {}),
    "lease renewal": lambda s: s.renew_job_leases("runner", ["j1"], 30.0),
}


@pytest.mark.parametrize("fault", ["hang", "kill"])
def test_a_store_that_stops_answering_fails_every_call_within_its_bound(proxied: Store, pg_proxy: PgProxy,
                                                                         fault: str) -> None:
    for call in CALLS.values():  # warm: pooled connections exist (the hang then meets them mid-statement)
        call(proxied)
    getattr(pg_proxy, fault)()
    error, took = timed(lambda: proxied.list_projects())
    assert isinstance(error, StoreUnavailableError), repr(error)
    assert took < BOUND_S + SLACK_S, f"the first call took {took:.2f} s"
    assert "control store" in str(error) and "retry" in str(error), str(error)
    assert "127.0.0.1" in str(error)  # which store (its password hidden)
    assert not proxied.available
    for name, call in CALLS.items():  # known to be away: every kind of call fails at once
        error, took = timed(lambda call=call: call(proxied))  # type: ignore[misc]
        assert isinstance(error, StoreUnavailableError), (name, repr(error))
        assert took < 0.5, f"{name}: {took:.2f} s while the store is known to be away"
    pg_proxy.forward()
    recovered = until_answers(lambda: proxied.list_projects(), 10.0)
    assert recovered < 3.0, f"recovery took {recovered:.2f} s"
    assert proxied.available
    for call in CALLS.values():
        call(proxied)  # every kind works again, on the same Store (no restart)
    assert [p.name for p in proxied.list_projects()][0] == "p"


def test_a_hung_store_bounds_new_connections_too(pg_own_store_url: str, pg_proxy: PgProxy) -> None:
    """No pooled connection to meet the hang: the connect itself (startup never answered) is bounded."""
    store = Store.open(pg_proxy.url(pg_own_store_url), timeouts=TIMEOUTS)
    try:
        store._engine.dispose()  # noqa: SLF001 - no pooled connection left
        pg_proxy.hang()
        error, took = timed(lambda: store.endpoint_for_call("p", "e"))
        assert isinstance(error, StoreUnavailableError), repr(error)
        assert took < BOUND_S + SLACK_S, took
    finally:
        pg_proxy.forward()
        store.close()


def test_opening_a_store_that_is_away_is_a_clear_retryable_error(pg_own_store_url: str, pg_proxy: PgProxy) -> None:
    pg_proxy.kill()
    error, took = timed(lambda: Store.open(pg_proxy.url(pg_own_store_url), timeouts=TIMEOUTS))
    assert isinstance(error, StoreUnavailableError), repr(error)
    assert "cannot be reached" in str(error), str(error)
    assert took < BOUND_S + SLACK_S


def test_concurrent_calls_on_a_hung_store_all_end_within_the_bound(proxied: Store, pg_proxy: PgProxy) -> None:
    """16 threads (a replica's request handlers, heartbeat and job leases) on a store that hangs mid-statement."""
    pg_proxy.hang()
    results: list[tuple[BaseException | None, float]] = []
    lock = threading.Lock()

    def worker() -> None:
        outcome = timed(lambda: proxied.endpoint_for_call("p", "e"))
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND_S * 3)
    assert len(results) == 16, "a call hung"
    assert all(isinstance(error, StoreUnavailableError) for error, _ in results), results
    assert max(took for _, took in results) < BOUND_S + SLACK_S, results
    pg_proxy.forward()
    until_answers(lambda: proxied.endpoint_for_call("p", "e"), 10.0)


def test_sqlite_write_lock_held_past_the_bound_is_unavailable_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / "e5studio.db"
    store = Store.open(path, timeouts=StoreTimeouts(statement_s=1.0))
    store.create_project("p")
    other = sqlite3.connect(path, isolation_level=None)  # another process's writer, holding the lock
    other.execute("BEGIN IMMEDIATE")
    try:
        error, took = timed(lambda: store.create_project("q"))
        assert isinstance(error, StoreUnavailableError), repr(error)
        assert str(path) in str(error) and "busy" in str(error), str(error)
        assert took < 1.0 + SLACK_S + 1.0, took
        assert [p.name for p in store.list_projects()] == ["p"]  # reads keep working
        assert store.available  # a busy lock is not an outage: no call is refused for it
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.create_project("q")
    assert [p.name for p in store.list_projects()] == ["p", "q"]
    store.close()
