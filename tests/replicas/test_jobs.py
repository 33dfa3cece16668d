"""Train jobs on two replicas: a job runs exactly once whichever replica takes it; when the replica running it
dies (SIGKILL, with its job process: the machine went down), the other one marks it Interrupted once its lease
expires, and Resume through the survivor finishes it with the result of an uninterrupted run.

Jobs are driven through the web UI as a user would (dataset by path, the train form, Resume); which processes
run a job is read from ``/proc`` (``--job-id <id>`` on the command line; the replica it descends from).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.replicas.cluster import (
    Group,
    JobWatch,
    Replica,
    csrf_token,
    kill_group,
    login,
    session_client,
    start_group,
    stop_group,
    wait_until,
)

# 24 queries / batch 4 = 6 steps per epoch; 6 epochs = 36 steps (a few seconds on the tiny model), a checkpoint
# every 3 steps
PARAMS = {"epochs": "6", "batch_size": "4", "train_n_passages": "3", "lr": "1e-3", "save_every": "3",
          "query_max_length": "16", "passage_max_length": "32", "threads": "1"}
STEPS = 36
JOB_TIMEOUT_S = 180.0
QUIET_AFTER_S = 2.0  # after a job ends, no replica starts it again (the replicas poll their jobs every second)
# The replicas of the kill test hold job leases of LEASE_S seconds (renewed every second): the survivor marks the
# dead replica's job Interrupted once the lease expired (at its next poll, every second), not before.
LEASE_S = 3.0
INTERRUPTED_NOT_BEFORE_S = LEASE_S - 2.0  # the last renewal may have come up to a second before the kill
INTERRUPTED_WITHIN_S = LEASE_S + 10.0


@dataclass
class TrainRun:
    job_id: str
    job_dir: Path
    status: dict[str, Any]  # /ui/api/jobs/<id> at the end
    watch: JobWatch


def add_dataset(replica: Replica, cookie: str, name: str, path: Path) -> None:
    with session_client(replica, cookie) as client:
        answer = client.post("/ui/datasets/path", data={"name": name, "path": str(path), "description": "",
                                                         "train_n_passages": "3", "csrf_token": csrf_token(client)})
    assert answer.status_code == 303, answer.text[:1000]


def submit_train(replica: Replica, cookie: str, dataset: str, model: Path) -> str:
    """The train form, posted to ``replica``; the new job's id."""
    with session_client(replica, cookie) as client:
        answer = client.post("/ui/jobs", data={"dataset": dataset, "model": "", "model_other": str(model),
                                               "eval_dir": "", **PARAMS, "csrf_token": csrf_token(client)})
    assert answer.status_code == 303, answer.text[:1000]
    location = answer.headers["location"]
    assert location.startswith("/ui/jobs/"), location
    return location.rsplit("/", 1)[1]


def job_status(replica: Replica, cookie: str, job_id: str) -> dict[str, Any]:
    with session_client(replica, cookie) as client:
        answer = client.get(f"/ui/api/jobs/{job_id}")
    assert answer.status_code == 200, answer.text
    status: dict[str, Any] = answer.json()
    return status


def wait_status(replica: Replica, cookie: str, job_id: str, wanted: str, timeout: float) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    def reached() -> bool:
        seen.append(job_status(replica, cookie, job_id))
        status = seen[-1]["status"]
        if status != wanted and status in ("Failed", "Cancelled", "Interrupted", "Succeeded"):
            pytest.fail(f"job {job_id} is {status} on replica {replica.name} (waiting for {wanted}): {seen[-1]}")
        return status == wanted

    try:
        wait_until(reached, timeout, f"job {job_id} {wanted} on replica {replica.name}", interval=0.2)
    except AssertionError as exc:
        last = {k: seen[-1].get(k) for k in ("status", "status_reason", "step", "log")} if seen else None
        raise AssertionError(f"{exc}; last seen: {last}") from None
    return seen[-1]


def spawn_lines(job_dir: Path) -> list[str]:
    """The header line the server writes into job.log each time it starts the job's process."""
    return [line for line in (job_dir / "job.log").read_text(errors="replace").splitlines() if line.startswith("--- ")]


def loss_steps(status: dict[str, Any]) -> list[int]:
    return [int(step) for step, _ in status["history"]["loss"]]


def final_weights(job_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(job_dir / "final" / "model.safetensors"))


def logged_in(group: Group) -> dict[str, str]:
    """A web session on each replica (made there, so these tests do not lean on sessions being shared)."""
    return {r.name: login(r, group.admin_token) for r in group.replicas}


@pytest.fixture(scope="session")
def reference_run(pair: Group, toy_dir: Path, train_model: Path) -> Iterator[TrainRun]:
    """A train job submitted through replica a of the shared pair and left alone to finish."""
    a, b = pair.replicas
    cookies = logged_in(pair)
    add_dataset(a, cookies["a"], "toy", toy_dir)
    with JobWatch(pair.replicas).running() as watch:
        job_id = submit_train(a, cookies["a"], "toy", train_model)
        watch.job_id = job_id
        status = wait_status(a, cookies["a"], job_id, "Succeeded", JOB_TIMEOUT_S)
        time.sleep(QUIET_AFTER_S)
    yield TrainRun(job_id, pair.data_dir / "jobs" / job_id, status, watch)


def test_a_train_job_submitted_through_a_runs_exactly_once_across_a_and_b(pair: Group, reference_run: TrainRun) -> None:
    run = reference_run
    assert len(run.watch.runs) == 1, f"the job ran as {len(run.watch.runs)} processes: {run.watch.runs}"
    assert run.watch.most_at_once == 1
    (owner,) = run.watch.runs.values()
    assert owner in ("a", "b"), f"the job process descends from no replica: {run.watch.runs}"
    assert len(spawn_lines(run.job_dir)) == 1, spawn_lines(run.job_dir)
    assert (run.status["step"], run.status["total_steps"]) == (STEPS, STEPS), run.status
    assert loss_steps(run.status) == list(range(1, STEPS + 1))  # one record per step, none twice
    # both replicas report the same finished job
    cookies = logged_in(pair)
    for replica in pair.replicas:
        seen = job_status(replica, cookies[replica.name], run.job_id)
        assert (seen["status"], seen["step"], seen["history"]) == ("Succeeded", STEPS, run.status["history"])
    assert (run.job_dir / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_sigkill_of_the_replica_running_a_job_then_the_other_interrupts_and_resumes_it(
        postgres_url: str, tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path, toy_dir: Path,
        train_model: Path, reference_run: TrainRun) -> None:
    group = start_group(postgres_url, tmp_path_factory.mktemp("kill"), "replicas_kill", tiny_dir,
                        extra_args=("--job-lease", str(LEASE_S)))
    try:
        cookies = logged_in(group)
        a = group.replicas[0]
        add_dataset(a, cookies["a"], "toy", toy_dir)
        with JobWatch(group.replicas).running() as watch:
            job_id = submit_train(a, cookies["a"], "toy", train_model)
            watch.job_id = job_id
            job_dir = group.data_dir / "jobs" / job_id

            def mid_run() -> int | None:  # the job's process, once it wrote a checkpoint and before it ends
                pids = watch.sample()
                checkpoints = list((job_dir / "checkpoints").glob("step-*")) if job_dir.is_dir() else []
                return pids[0] if pids and checkpoints else None

            job_pid, _ = wait_until(mid_run, JOB_TIMEOUT_S, f"job {job_id} running with a checkpoint")
            victim = next(r for r in group.replicas if r.name == watch.owner(job_pid))
            survivor = next(r for r in group.replicas if r is not victim)
            victim.proc.kill()  # type: ignore[union-attr] - SIGKILL: the replica and ...
            kill_group(job_pid)  # ... its job process die without a word
            killed_at = time.monotonic()
            victim.proc.wait()  # type: ignore[union-attr]
            killed = job_status(survivor, cookies[survivor.name], job_id)
            assert killed["status"] == "Running" and killed["step"] < STEPS, killed

            interrupted = wait_status(survivor, cookies[survivor.name], job_id, "Interrupted", INTERRUPTED_WITHIN_S)
            after = time.monotonic() - killed_at
            assert after >= INTERRUPTED_NOT_BEFORE_S, f"Interrupted {after:.1f} s after the kill: lease not over"
            assert "lease" in interrupted["status_reason"], interrupted
            with session_client(survivor, cookies[survivor.name]) as client:
                answer = client.post(f"/ui/jobs/{job_id}/resume", data={"csrf_token": csrf_token(client)})
            assert answer.status_code == 303, answer.text[:1000]
            done = wait_status(survivor, cookies[survivor.name], job_id, "Succeeded", JOB_TIMEOUT_S)
            time.sleep(QUIET_AFTER_S)

        owners = list(watch.runs.values())
        assert owners == [victim.name, survivor.name], watch.runs  # killed run, then the resumed one
        assert watch.most_at_once == 1
        assert len(spawn_lines(job_dir)) == 2 and spawn_lines(job_dir)[1].endswith("--resume"), spawn_lines(job_dir)
        assert "resuming from step-" in "\n".join(done["log"]), done["log"]
        assert loss_steps(done) == list(range(1, STEPS + 1))  # the steps after the checkpoint ran again, kept once
        # the same result as the uninterrupted run: per-step losses and the final weights
        reference = reference_run.status["history"]["loss"]
        np.testing.assert_allclose([loss for _, loss in done["history"]["loss"]], [loss for _, loss in reference],
                                   rtol=1e-4, atol=1e-6)
        expected, got = final_weights(reference_run.job_dir), final_weights(job_dir)
        assert sorted(got) == sorted(expected)
        for name, tensor in expected.items():
            np.testing.assert_allclose(got[name], tensor, rtol=1e-4, atol=1e-5, err_msg=name)
    finally:
        stop_group(group)
