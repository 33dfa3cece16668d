"""Several servers (replicas) sharing one PostgreSQL store, in one process: two ``Store`` objects (and two job
runners) on one database stand for two replicas. What one replica records, the other sees at once: endpoints,
keys, web sessions, failed logins; jobs run exactly once and survive the death of the replica running them."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e5studio.control.job_records import KIND_TRAIN, lease_expired_reason
from e5studio.control.job_runner import JobRunner
from e5studio.control.replicas import MODEL_FAILED, MODEL_LOADING, MODEL_READY
from e5studio.control.store import JOB_CANCELLED, JOB_INTERRUPTED, JOB_QUEUED, JOB_RUNNING, Store
from e5studio.errors import CapacityError, NotFoundError
from e5studio.jobspec.params import validate_params
from e5studio.jobspec.train_params import TRAIN_PARAMS
from e5studio.serving.throttle import LoginThrottle
from e5studio.web.sessions import SessionStore
from tests.control.test_job_runner import SLEEPER, _env, register
from tests.jobs.toy import toy_dataset

LEASE_S = 1.0


@pytest.fixture
def pair(pg_store_url: str) -> Iterator[tuple[Store, Store]]:
    """Replica A's and replica B's store: two engines (connection pools) on one PostgreSQL database."""
    a, b = Store(pg_store_url), Store(pg_store_url)
    yield a, b
    a.close()
    b.close()


def _within(seconds: float, check: object) -> float:
    """How long until ``check()`` holds (it must within ``seconds``)."""
    started = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - started


# -- endpoints and keys ------------------------------------------------------------------------------------


def test_an_endpoint_created_on_one_replica_is_known_to_the_other(pair: tuple[Store, Store]) -> None:
    a, b = pair
    a.create_project("p")
    endpoint, key = a.create_endpoint("p", "kb", "m", 32)
    assert b.get_endpoint("p", "kb") == endpoint and b.find_endpoint(endpoint.id) == endpoint
    assert b.check_endpoint_key(endpoint.id, key)


def test_a_key_rotated_on_one_replica_is_refused_on_the_other_at_once(pair: tuple[Store, Store]) -> None:
    a, b = pair
    a.create_project("p")
    endpoint, old = a.create_endpoint("p", "kb", "m", 32)
    assert a.check_endpoint_key(endpoint.id, old)
    new = b.rotate_key(endpoint.id)
    assert _within(2.0, lambda: not a.check_endpoint_key(endpoint.id, old)) < 0.1  # no cache: the next check
    assert a.check_endpoint_key(endpoint.id, new)


def test_an_endpoint_deleted_on_one_replica_is_gone_on_the_other(pair: tuple[Store, Store]) -> None:
    a, b = pair
    a.create_project("p")
    endpoint, key = a.create_endpoint("p", "kb", "m", 32)
    b.delete_endpoint(endpoint.id)
    assert not a.check_endpoint_key(endpoint.id, key)
    with pytest.raises(NotFoundError):
        a.get_endpoint("p", "kb")


def test_two_replicas_racing_for_one_name_give_one_winner(pair: tuple[Store, Store]) -> None:
    a, b = pair
    a.create_project("p")
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def create(store: Store) -> None:
        barrier.wait()
        try:
            store.create_endpoint("p", "same", "m", 1)
        except BaseException as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(pair[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 7 and all("already exists" in str(e) for e in errors)
    assert [e.name for e in b.list_endpoints()] == ["same"]


# -- web sessions and failed logins ------------------------------------------------------------------------


def test_a_web_session_made_on_one_replica_works_on_the_other_and_logout_ends_it_everywhere(
        pair: tuple[Store, Store]) -> None:
    a, b = SessionStore(pair[0]), SessionStore(pair[1])
    session_id, made = a.create()
    seen = b.get(session_id)
    assert seen is not None and seen.csrf_token == made.csrf_token and seen.check_csrf(made.csrf_token)
    made.flash("key:e1", "e5s_shown-once")  # set on A (a new key) ...
    assert seen.pop_flash("key:e1") == "e5s_shown-once"  # ... shown on B, once
    assert made.pop_flash("key:e1") is None
    b.delete(session_id)  # logout on B
    assert a.get(session_id) is None and b.get(session_id) is None
    assert a.get("not-a-session") is None


def test_sessions_expire_and_keep_only_hashes_and_sealed_flashes(pair: tuple[Store, Store]) -> None:
    a = SessionStore(pair[0], ttl_s=0.3)
    session_id, session = a.create()
    session.flash("key:e1", "e5s_secret-value")
    with pair[0]._read() as conn:
        rows = [tuple(row) for row in conn.exec_driver_sql("SELECT id_hash, flashes FROM web_sessions")]
    assert len(rows) == 1 and session_id not in str(rows) and "secret-value" not in str(rows)
    assert session.csrf_token not in str(rows)
    time.sleep(0.4)
    assert SessionStore(pair[1]).get(session_id) is None


def test_failed_logins_spread_over_two_replicas_are_throttled_together(pair: tuple[Store, Store]) -> None:
    a, b = LoginThrottle(failures=pair[0]), LoginThrottle(failures=pair[1])
    for i in range(10):  # 10 failures, alternating between the replicas
        replica = (a, b)[i % 2]
        replica.check("10.0.0.66")
        replica.failed("10.0.0.66")
    for replica in (a, b):
        with pytest.raises(CapacityError, match="10 in the last 60 s") as refused:
            replica.check("10.0.0.66")
        assert 55 <= refused.value.retry_after_s <= 60
    a.check("10.0.0.7")  # another address is not affected


def test_failed_logins_leave_the_table_once_out_of_every_window(pair: tuple[Store, Store]) -> None:
    now = [1000.0]
    throttle = LoginThrottle(limit=3, window_s=60, clock=lambda: now[0], failures=pair[0])
    for address in ("a", "b", "c"):
        throttle.failed(address)
    now[0] += 61
    throttle.failed("d")  # each record forgets what left the window
    with pair[1]._read() as conn:
        assert [row[0] for row in conn.exec_driver_sql("SELECT address FROM login_failures")] == ["d"]


# -- replicas ----------------------------------------------------------------------------------------------


def test_replicas_count_where_an_endpoint_is_ready(pair: tuple[Store, Store]) -> None:
    a, b = pair
    a.create_project("p")
    endpoint, _ = a.create_endpoint("p", "kb", "m", 32)
    a.heartbeat_replica("A", {endpoint.id: MODEL_READY}, host="host-a")
    b.heartbeat_replica("B", {endpoint.id: MODEL_LOADING}, host="host-b")
    assert str(b.endpoint_readiness(endpoint.id)) == "ready on 1 of 2 replicas"
    assert b.endpoint_readiness(endpoint.id, exclude="A").ready == 0
    b.heartbeat_replica("B", {endpoint.id: MODEL_READY})
    assert a.endpoint_readiness(endpoint.id).ready == 2
    a.heartbeat_replica("C", {endpoint.id: MODEL_FAILED}, now_s=time.time() - 60)  # silent for a minute
    assert [r.id for r in a.list_replicas()] == ["A", "B"]
    a.remove_replica("A")
    assert str(b.endpoint_readiness(endpoint.id)) == "ready on 1 of 1 replica"


# -- jobs: claimed once, leased, taken over --------------------------------------------------------------


def test_two_replicas_racing_claim_every_queued_job_exactly_once(pair: tuple[Store, Store]) -> None:
    a, b = pair
    queued = {a.create_job(KIND_TRAIN, "m", f"/o{i}", {}, status=JOB_QUEUED).id for i in range(40)}
    claims: dict[str, list[str]] = {"A": [], "B": []}
    barrier = threading.Barrier(4)

    def claim(store: Store, owner: str) -> None:
        barrier.wait()
        while (job := store.claim_job(owner, 30.0)) is not None:
            claims[owner].append(job.id)

    threads = [threading.Thread(target=claim, args=(store, owner)) for store, owner in ((a, "A"), (b, "B")) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken = claims["A"] + claims["B"]
    assert sorted(taken) == sorted(queued)  # every job once, none twice
    assert claims["A"] and claims["B"]  # SKIP LOCKED: neither replica waited for the other's row
    for job in a.list_jobs():
        owner = "A" if job.id in claims["A"] else "B"
        assert (job.status, job.lease_owner, job.runner_id) == (JOB_RUNNING, owner, owner)
        assert job.lease_expires_at is not None and job.lease_expires_at > time.time() + 25


def test_leases_renew_expire_and_a_status_change_drops_them(pair: tuple[Store, Store]) -> None:
    a, b = pair
    job = a.create_job(KIND_TRAIN, "m", "/o", {}, status=JOB_QUEUED)
    claimed = a.claim_job("A", 10.0, job_id=job.id, now_s=1000.0)
    assert claimed is not None and claimed.lease_expires_at == 1010.0
    assert a.claim_job("B", 10.0, job_id=job.id) is None  # taken already
    assert b.renew_job_leases("B", [job.id], 10.0) == []  # not B's
    assert a.renew_job_leases("A", [job.id], 10.0, now_s=1005.0) == [job.id]
    assert b.expire_job_leases(now_s=1014.0) == []  # renewed until 1015
    expired = b.expire_job_leases(now_s=1016.0)
    assert [j.id for j in expired] == [job.id]
    after = a.get_job(job.id)
    assert (after.status, after.status_reason, after.lease_owner, after.lease_expires_at) == (
        JOB_INTERRUPTED, lease_expired_reason(KIND_TRAIN), "", None)
    assert a.renew_job_leases("A", [job.id], 10.0) == []  # A learns it lost the job
    assert b.lease_job(job.id, (JOB_INTERRUPTED,), "B", 10.0, "resumed", runner_host="host-b")
    assert (a.get_job(job.id).lease_owner, a.get_job(job.id).runner_host) == ("B", "host-b")
    assert a.transition_job(job.id, (JOB_RUNNING,), JOB_CANCELLED, "cancelled")
    assert a.get_job(job.id).lease_owner == ""  # any status change drops the lease
    assert b.expire_job_leases(now_s=time.time() + 3600) == []  # a job without a lease never expires


@pytest.fixture
def runner_pair(pair: tuple[Store, Store], tmp_path: Path) -> Iterator[tuple[JobRunner, JobRunner]]:
    """Job runners of replica A (host-a) and B (host-b), sharing the data dir (shared storage), 1 s leases."""
    register(pair[0], toy_dataset(tmp_path / "toy"))
    data_dir = tmp_path / "data"
    made = [JobRunner(store, data_dir, command=SLEEPER, env=_env(), lease_s=LEASE_S, host=host)
            for store, host in ((pair[0], "host-a"), (pair[1], "host-b"))]
    yield made[0], made[1]
    for runner in made:
        runner.close(timeout=5)


def _children(runner: JobRunner) -> list[str]:
    return [job_id for job_id, child in runner._children.items() if child.poll() is None]


def test_a_job_runs_on_exactly_one_replica_and_its_lease_is_renewed(
        runner_pair: tuple[JobRunner, JobRunner]) -> None:
    a, b = runner_pair
    job = a.start_train("toy", "m", {})
    assert (job.status, job.lease_owner, job.runner_host) == (JOB_RUNNING, a.id, "host-a")
    deadline = time.monotonic() + 3 * LEASE_S
    while time.monotonic() < deadline:  # three leases long: A renews, B finds nothing to take or expire
        assert b.poll() == [] and a.poll() == []
        time.sleep(0.1)
    assert _children(a) == [job.id] and _children(b) == []
    current = b.store.get_job(job.id)
    assert (current.status, current.lease_owner) == (JOB_RUNNING, a.id)
    assert current.lease_expires_at is not None and current.lease_expires_at > time.time()


def test_when_a_replica_dies_another_interrupts_its_job_after_the_lease_and_resumes_it(
        runner_pair: tuple[JobRunner, JobRunner]) -> None:
    a, b = runner_pair
    job = a.start_train("toy", "m", {})
    assert job.pid is not None
    a._stop_renewing.set()  # replica A dies (SIGKILL): no more renewals ...
    os.killpg(job.pid, signal.SIGKILL)  # ... and its host with the job's process
    b.poll()
    assert b.store.get_job(job.id).status == JOB_RUNNING  # the lease still runs
    waited = _within(LEASE_S + 3, lambda: b.poll() == [] and b.store.get_job(job.id).status == JOB_INTERRUPTED)
    assert waited > 0.3
    interrupted = b.store.get_job(job.id)
    assert (interrupted.status_reason, interrupted.pid, interrupted.lease_owner) == (
        lease_expired_reason(KIND_TRAIN), None, "")
    resumed = b.resume(job.id)  # Resume works from B
    assert (resumed.status, resumed.runner_id, resumed.runner_host, resumed.lease_owner) == (
        JOB_RUNNING, b.id, "host-b", b.id)
    assert _children(b) == [job.id]
    a._children.clear()  # A is gone (its runner never polls again)


def test_a_cancel_on_another_replica_stops_the_process_through_its_owner(
        runner_pair: tuple[JobRunner, JobRunner]) -> None:
    a, b = runner_pair
    job = a.start_train("toy", "m", {})
    assert b.cancel(job.id).status == JOB_CANCELLED  # recorded by B; A's process is on another host
    _within(LEASE_S + 3, lambda: a.poll() != [] or not _children(a))  # A's renewal loop stopped it
    assert a.store.get_job(job.id).status == JOB_CANCELLED


def test_a_queued_job_left_by_a_dead_replica_is_claimed_by_another(
        runner_pair: tuple[JobRunner, JobRunner], tmp_path: Path) -> None:
    a, b = runner_pair
    dataset = a.store.get_dataset("toy")
    folder = tmp_path / "data" / "jobs" / "left"
    params = {"dataset": dataset.ref, "eval_dir": None, **validate_params({}, TRAIN_PARAMS)}
    a.store.create_job(KIND_TRAIN, "m", str(folder), params, dataset.id, job_id="left", owner="server",
                       log_path=str(folder / "job.log"), status=JOB_QUEUED)  # A died before starting it
    b.poll()
    claimed = b.store.get_job("left")
    assert (claimed.status, claimed.runner_id, claimed.lease_owner) == (JOB_RUNNING, b.id, b.id)
    assert _children(b) == ["left"] and claimed.pid is not None
    assert "--job-id left" in (folder / "job.log").read_text()


def test_the_job_processes_of_a_postgres_store_get_its_url_not_the_data_dir(pair: tuple[Store, Store],
                                                                           tmp_path: Path) -> None:
    runner = JobRunner(pair[0], tmp_path / "anywhere", env={"E5STUDIO_STORE": "/elsewhere.db"})
    assert runner.env["E5STUDIO_STORE"] == pair[0].secret_url
    assert sys.executable in runner.command
