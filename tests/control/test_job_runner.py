"""The job runner: train and batch-embedding jobs as real child processes on a tiny random BERT.

Real jobs run ``python -m e5studio`` (or the same CLI with each training step slowed down, so that a cancel,
a shutdown or a kill lands mid-run); the runner's own bookkeeping (exit codes, signals, orphans, other
servers) is also driven by small stand-in processes that start in milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e5studio.cli import build_parser
from e5studio.control.job_records import CANCEL_REASON, restart_reason, shutdown_reason
from e5studio.control.job_runner import JobRunner
from e5studio.control.priority import COMPUTE_NICE
from e5studio.control.store import (
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_INTERRUPTED,
    JOB_OWNER_CLI,
    JOB_OWNER_SERVER,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    Dataset,
    Store,
)
from e5studio.errors import ConflictError, NotFoundError, ParamError, UnavailableError
from e5studio.jobspec.batch_params import BATCH_EMBED_PARAMS
from e5studio.jobspec.dataset_format import validate_dataset
from e5studio.jobspec.params import validate_params
from e5studio.jobspec.train_params import TRAIN_PARAMS, train_param_defaults
from tests import stores
from tests.jobs.toy import tiny_checkpoint, toy_dataset

# 24 queries / batch 4 = 6 steps per epoch, 2 epochs = 12 steps; checkpoints every 2 steps
PARAMS = {"epochs": 2, "batch_size": 4, "train_n_passages": 3, "lr": 1e-3, "save_every": 2, "query_max_length": 16,
          "passage_max_length": 32, "threads": 1}
STEPS = 12

# the real CLI with every training step slowed down, so that a cancel, a shutdown or a kill lands mid-run
SLOW_CLI = """
import sys, time
from e5studio.jobs.train import commands
original = commands.StoreReporter.on_step
def on_step(self, step, total, loss):
    original(self, step, total, loss)
    time.sleep(0.3)
commands.StoreReporter.on_step = on_step
from e5studio.cli import main
sys.exit(main(sys.argv[1:]))
"""
SLOW = [sys.executable, "-c", SLOW_CLI]


def stand_in(code: str) -> list[str]:
    """A command that runs ``code`` instead of e5studio (the job's arguments follow, unused)."""
    return [sys.executable, "-c", code]


SLEEPER = stand_in("import time; print('working', flush=True); time.sleep(120)")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("E5STUDIO_")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return toy_dataset(tmp_path_factory.mktemp("toy") / "data")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", dropout=0.0)


def register(store: Store, directory: Path, name: str = "toy") -> Dataset:
    report = validate_dataset(directory, 3)
    assert report.ok, report.errors
    return store.add_dataset(name, str(directory), passages=report.passages, queries=report.queries,
                             positives=report.positives, negatives=report.negatives,
                             passages_sha256=report.passages_sha256, train_sha256=report.train_sha256)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


# the store of a test: the SQLite file of the data dir, or a PostgreSQL database (the job processes get its URL);
# the runner's bookkeeping runs on both, real training on PostgreSQL only with the slow tests
BOTH = pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)
REAL = pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)], indirect=True)


@pytest.fixture
def store(request: pytest.FixtureRequest, data_dir: Path, toy: Path) -> Iterator[Store]:
    kind = getattr(request, "param", "postgres" if stores.on_postgres() else "sqlite")
    opened = Store(data_dir / "e5studio.db" if kind == "sqlite" else request.getfixturevalue("pg_store_url"))
    register(opened, toy)
    yield opened
    opened.close()


@pytest.fixture
def runners(store: Store, data_dir: Path) -> Iterator[list[JobRunner]]:
    """Runners made by a test (every one closed at the end, so no process outlives the test)."""
    made: list[JobRunner] = []
    yield made
    for runner in made:
        runner.close(timeout=5)


def new_runner(runners: list[JobRunner], store: Store, data_dir: Path, command: list[str] | None = None) -> JobRunner:
    runner = JobRunner(store, data_dir, command=command, env=_env())
    runners.append(runner)
    return runner


def wait_for_steps(runner: JobRunner, job_id: str, steps: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(runner.history(job_id)["loss"]) < steps:
        runner.poll()
        job = runner.store.get_job(job_id)
        assert job.status == JOB_RUNNING, (job, runner.log_tail(job_id))
        assert time.monotonic() < deadline, runner.log_tail(job_id)
        time.sleep(0.05)


def loss_steps(runner: JobRunner, job_id: str) -> list[float]:
    return [step for step, _ in runner.history(job_id)["loss"]]


# ------------------------------------------------------------------------------------------------ parameters


@BOTH
def test_params_are_checked_and_a_bad_one_is_named(store: Store, data_dir: Path, toy: Path) -> None:
    runner = JobRunner(store, data_dir)
    bad = [({"epochs": 0}, "epochs"), ({"lr": "fast"}, "lr"), ({"batch_size": True}, "batch_size"),
           ({"warmup_ratio": 1}, "warmup_ratio"), ({"temperature": float("nan")}, "temperature"),
           ({"passage_max_length": 2.5}, "passage_max_length"), ({"epoch": 3}, "epoch"), ({"seed": -1}, "seed")]
    for params, field in bad:
        with pytest.raises(ParamError, match=f"^{field}: ") as caught:
            runner.start_train("toy", "m", params)
        assert caught.value.field == field
    with pytest.raises(ParamError, match="^model: ") as caught:
        runner.start_train("toy", " ", {})
    with pytest.raises(ParamError, match="^eval_dir: .*missing passages.jsonl, queries.test.jsonl") as caught:
        runner.start_train("toy", "m", {}, eval_dir=str(data_dir))
    # several sets (a list, or the web form's one folder per line): each is checked, the bad one named
    with pytest.raises(ParamError, match=f"^eval_dir: {data_dir.resolve()} must hold .*missing passages.jsonl"):
        runner.start_train("toy", "m", {}, eval_dir=f"{toy}\n\n{data_dir}")
    with pytest.raises(ParamError, match="^eval_dir: must be folder paths, got 3"):
        runner.start_train("toy", "m", {}, eval_dir=[str(toy), 3])  # type: ignore[list-item]
    with pytest.raises(ParamError, match="^interpolate: must be auto or a number in \\(0, 1\\], got '1.5'"):
        runner.start_train("toy", "m", {"interpolate": "1.5"})
    with pytest.raises(ParamError, match="^window_size: "):
        runner.start_batch_embed("toy", "m", {"window_size": 0})
    with pytest.raises(NotFoundError, match="dataset 'nope' not found"):
        runner.start_train("nope", "m", {})
    assert store.list_jobs() == [] and not (data_dir / "jobs").exists()  # nothing recorded, nothing started
    # form values arrive as strings; empty means the default
    values = validate_params({"epochs": "2", "lr": "1e-3", "threads": "", "seed": 7.0}, TRAIN_PARAMS)
    assert values == {**train_param_defaults(), "epochs": 2, "lr": 0.001, "seed": 7}


def test_defaults_are_the_commands_own() -> None:
    train = vars(build_parser().parse_args(["train", "--dataset", "d", "--model", "m", "--output", "o"]))
    assert train_param_defaults() == {name: train[name] for name in TRAIN_PARAMS}
    embed = vars(build_parser().parse_args(["embed-corpus", "in.jsonl", "-o", "out", "--model", "m"]))
    assert {n: s.default for n, s in BATCH_EMBED_PARAMS.items()} == {name: embed[name] for name in BATCH_EMBED_PARAMS}


def test_the_runner_needs_the_data_dirs_store(tmp_path: Path) -> None:
    with Store(tmp_path / "elsewhere.db") as other, pytest.raises(ValueError, match="e5studio.db"):
        JobRunner(other, tmp_path)


# ------------------------------------------------------------------------------------------------ real jobs


@REAL
def test_a_train_job_succeeds_with_its_history_log_and_model(store: Store, data_dir: Path, toy: Path, tiny: Path,
                                                            runners: list[JobRunner]) -> None:
    runner = new_runner(runners, store, data_dir)
    job = runner.start_train("toy", str(tiny), PARAMS, eval_dir=str(toy))
    assert (job.status, job.owner, job.runner_id) == (JOB_RUNNING, JOB_OWNER_SERVER, runner.id)
    assert job.pid is not None and job.output == str(data_dir.resolve() / "jobs" / job.id)
    assert job.log_path == str(Path(job.output) / "job.log")
    assert job.params == {**train_param_defaults(), **PARAMS, "dataset": "toy@1", "eval_dirs": [str(toy.resolve())]}
    done = runner.wait(job.id, timeout=120)
    assert done.status == JOB_SUCCEEDED, runner.log_tail(job.id)
    assert (done.step, done.total_steps, done.pid, done.status_reason) == (STEPS, STEPS, None, "")
    assert done.metrics["final_dir"] == str(Path(job.output) / "final")
    history = runner.history(job.id)
    assert [step for step, _ in history["loss"]] == list(range(1, STEPS + 1))
    assert [(epoch, step) for epoch, step, _ in history["eval"]] == [(0, 0), (1, 6), (2, 12)]
    assert all(0.0 <= ndcg <= 1.0 for _, _, ndcg in history["eval"])
    merged = runner.history(job.id, max_points=5)["loss"]  # buckets of 3 steps: [last step, mean loss]
    assert [step for step, _ in merged] == [3, 6, 9, 12]
    assert merged[0][1] == pytest.approx(sum(loss for _, loss in history["loss"][:3]) / 3)
    final = runner.final_model_dir(done)
    assert final is not None and (final / "model.safetensors").is_file() and (final / "config.json").is_file()
    log = runner.log_tail(job.id, lines=200)
    assert log[0].startswith("--- ") and f"--job-id {job.id}" in log[0]
    assert any(line.startswith(f"train job {job.id}: ") for line in log)
    assert runner.log_tail(job.id, lines=2) == log[-2:]
    assert runner.poll() == [] and len(store.list_jobs()) == 1  # the process used the job, recorded no other


@REAL
def test_cancel_is_recorded_as_cancelled_shutdown_as_interrupted_and_resume_finishes(
        store: Store, data_dir: Path, tiny: Path, runners: list[JobRunner]) -> None:
    slow = new_runner(runners, store, data_dir, SLOW)
    job = slow.start_train("toy", str(tiny), PARAMS)
    wait_for_steps(slow, job.id, 3)
    cancelled = slow.cancel(job.id)
    assert (cancelled.status, cancelled.status_reason) == (JOB_CANCELLED, CANCEL_REASON)  # recorded before SIGTERM
    stopped = slow.wait(job.id, timeout=60)
    assert (stopped.status, stopped.status_reason, stopped.pid) == (JOB_CANCELLED, CANCEL_REASON, None)
    assert "e5studio: interrupted (SIGTERM)" in "\n".join(slow.log_tail(job.id))
    assert len(loss_steps(slow, job.id)) < STEPS
    with pytest.raises(ConflictError, match="only a Running job can be cancelled"):
        slow.cancel(job.id)

    resumed = slow.resume(job.id)
    assert (resumed.status, resumed.status_reason) == (JOB_RUNNING, "resumed") and resumed.pid is not None
    with pytest.raises(ConflictError, match="only Interrupted, Failed or Cancelled"):
        slow.resume(job.id)
    wait_for_steps(slow, job.id, len(loss_steps(slow, job.id)) + 2)
    assert [j.id for j in slow.close(timeout=60)] == [job.id]  # server shutdown
    interrupted = store.get_job(job.id)
    assert (interrupted.status, interrupted.status_reason) == (JOB_INTERRUPTED, shutdown_reason("train"))
    assert "e5studio: interrupted (SIGTERM)" in "\n".join(slow.log_tail(job.id, 5))
    with pytest.raises(UnavailableError):
        slow.start_train("toy", str(tiny), PARAMS)

    fast = new_runner(runners, store, data_dir)  # the next server
    assert fast.recover() == []  # nothing left Running
    fast.resume(job.id)
    done = fast.wait(job.id, timeout=120)
    assert done.status == JOB_SUCCEEDED and done.step == STEPS, fast.log_tail(job.id)
    assert "resuming from step-" in "\n".join(fast.log_tail(job.id))
    assert loss_steps(fast, job.id) == list(range(1, STEPS + 1))  # one record per step, none twice


@REAL
def test_a_restart_after_a_sigkill_interrupts_the_job_and_resume_finishes_it(
        store: Store, data_dir: Path, tiny: Path, runners: list[JobRunner]) -> None:
    old = new_runner(runners, store, data_dir, SLOW)
    job = old.start_train("toy", str(tiny), PARAMS)
    wait_for_steps(old, job.id, 3)
    assert job.pid is not None
    os.killpg(job.pid, signal.SIGKILL)  # the machine went down: the job process dies without a word ...
    runners.remove(old)  # ... and so did the server (its runner never polls again)
    new = new_runner(runners, store, data_dir)
    assert store.get_job(job.id).status == JOB_RUNNING
    recovered = new.recover()
    assert [j.id for j in recovered] == [job.id]
    assert (recovered[0].status, recovered[0].status_reason, recovered[0].pid) == (
        JOB_INTERRUPTED, restart_reason("train"), None)
    assert restart_reason("train") == "server restarted; resume continues from the last checkpoint"
    assert new.recover() == []
    new.resume(job.id)
    done = new.wait(job.id, timeout=120)
    assert done.status == JOB_SUCCEEDED, new.log_tail(job.id)
    assert loss_steps(new, job.id) == list(range(1, STEPS + 1))
    assert new.final_model_dir(done) is not None


@REAL
def test_a_job_whose_dataset_changed_fails_with_the_reason(tmp_path: Path, store: Store, data_dir: Path, toy: Path,
                                                           tiny: Path, runners: list[JobRunner]) -> None:
    copy = shutil.copytree(toy, tmp_path / "copy")
    register(store, copy, "copied")
    with (copy / "train.jsonl").open("a") as f:
        f.write(json.dumps({"query": "q", "positives": {"doc_id": ["1"]}}) + "\n")
    runner = new_runner(runners, store, data_dir)
    job = runner.start_train("copied", str(tiny), PARAMS)
    failed = runner.wait(job.id, timeout=60)
    assert failed.status == JOB_FAILED and failed.pid is None
    assert failed.status_reason.startswith("InputError: dataset copied@1: ")
    assert "changed since it was recorded" in failed.status_reason
    assert runner.final_model_dir(failed) is None
    assert runner.history(job.id) == {"loss": [], "eval": [], "sets": {}}


@REAL
def test_a_batch_embedding_job_writes_vectors(store: Store, data_dir: Path, tiny: Path,
                                              runners: list[JobRunner]) -> None:
    runner = new_runner(runners, store, data_dir)
    job = runner.start_batch_embed("toy", str(tiny), {"threads": 1, "workers": 1, "window_size": 10})
    assert (job.kind, job.total_steps, job.status) == ("batch_embed", 32, JOB_RUNNING)
    done = runner.wait(job.id, timeout=120)
    assert done.status == JOB_SUCCEEDED, runner.log_tail(job.id)
    assert (done.step, done.total_steps, done.metrics["count"], done.metrics["rejects"]) == (32, 32, 32, 0)
    vectors = runner.vectors_dir(done)
    assert vectors == Path(job.output) / "vectors" and runner.final_model_dir(done) is None
    manifest = json.loads((vectors / "manifest.json").read_text())
    assert (manifest["status"], manifest["count"], len(manifest["shards"]), manifest["dim"]) == ("complete", 32, 4, 32)
    assert manifest["input"]["path"] == str((Path(store.get_dataset("toy").path) / "passages.jsonl").resolve())
    assert runner.history(job.id) == {"loss": [], "eval": [], "sets": {}}


# ------------------------------------------------------------------------------------------------ bookkeeping


@BOTH
def test_a_process_that_ends_without_a_result_is_failed_with_its_exit_status_and_last_line(
        store: Store, data_dir: Path, runners: list[JobRunner]) -> None:
    exits = new_runner(runners, store, data_dir, stand_in("import sys; print('loading'); print('no such model: m');"
                                                          " sys.exit(3)"))
    job = exits.start_train("toy", "m", {})
    failed = exits.wait(job.id, timeout=30)
    assert (failed.status, failed.pid) == (JOB_FAILED, None)
    assert failed.status_reason == "the job process ended without recording a result (exit code 3): no such model: m"
    killed = new_runner(runners, store, data_dir, stand_in("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    job = killed.start_batch_embed("toy", "m")
    assert killed.wait(job.id, timeout=30).status_reason == (
        "the job process ended without recording a result (killed by SIGKILL)")
    assert [j.id for j in killed.poll()] == []


@BOTH
def test_cancel_resume_and_close_of_any_job_process(store: Store, data_dir: Path, runners: list[JobRunner]) -> None:
    runner = new_runner(runners, store, data_dir, SLEEPER)
    job = runner.start_batch_embed("toy", "m")
    assert runner.cancel(job.id).status == JOB_CANCELLED
    first_pid = job.pid
    assert runner.wait(job.id, timeout=30).status == JOB_CANCELLED  # killed by SIGTERM: the cancel stands
    resumed = runner.resume(job.id)
    assert resumed.status == JOB_RUNNING and resumed.pid not in (None, first_pid)
    other = runner.start_train("toy", "m", {})
    time.sleep(0.3)
    assert runner.poll() == []
    ended = runner.close(timeout=10)
    assert sorted(j.id for j in ended) == sorted([job.id, other.id])
    for ended_job in ended:
        assert (ended_job.status, ended_job.pid) == (JOB_INTERRUPTED, None)
        assert ended_job.status_reason == shutdown_reason(ended_job.kind)
    with pytest.raises(UnavailableError):
        runner.resume(job.id)


@BOTH
def test_recover_stops_a_job_process_that_outlived_its_server(store: Store, data_dir: Path,
                                                              runners: list[JobRunner]) -> None:
    old = new_runner(runners, store, data_dir, SLEEPER)
    job = old.start_train("toy", "m", {})
    runners.remove(old)  # the server died; its job process lives on
    new = new_runner(runners, store, data_dir)
    started = time.monotonic()
    recovered = new.recover(timeout=10)
    expected = [(job.id, JOB_INTERRUPTED, restart_reason("train"))]
    assert [(j.id, j.status, j.status_reason) for j in recovered] == expected
    assert time.monotonic() - started < 5  # SIGTERM was enough
    assert job.pid is not None
    with contextlib.suppress(ChildProcessError):  # it was this test process's child: reap it
        os.waitpid(job.pid, 0)
    with pytest.raises(ProcessLookupError):
        os.kill(job.pid, 0)


@BOTH
def test_recover_leaves_live_servers_and_live_commands_alone(store: Store, data_dir: Path) -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "e5studio", "train"]) as live:
        try:
            other_server = store.create_job("train", "m", "/o1", {}, owner=JOB_OWNER_SERVER, runner_id="other",
                                            runner_pid=live.pid)
            live_cli = store.create_job("train", "m", "/o2", {})
            store.set_job_process(live_cli.id, live.pid, owner=JOB_OWNER_CLI)
            dead_cli = store.create_job("train", "m", "/o3", {})
            store.set_job_process(dead_cli.id, 2**22 + 12345, owner=JOB_OWNER_CLI)  # above Linux's pid_max
            legacy = store.create_job("train", "m", "/o4", {})  # recorded before processes were
            recovered = JobRunner(store, data_dir).recover()
            assert [j.id for j in recovered] == [dead_cli.id]
            assert recovered[0].status == JOB_INTERRUPTED and "--resume" in recovered[0].status_reason
            for kept in (other_server, live_cli, legacy):
                assert store.get_job(kept.id).status == JOB_RUNNING
            assert live.poll() is None  # not signalled
        finally:
            live.kill()


@BOTH
def test_store_transitions_are_compare_and_set(store: Store) -> None:
    job = store.create_job("train", "m", "/o", {})
    assert store.transition_job(job.id, (JOB_RUNNING,), JOB_CANCELLED, "cancelled")
    assert not store.transition_job(job.id, (JOB_RUNNING,), JOB_INTERRUPTED, "shutdown")
    assert store.get_job(job.id).status == JOB_CANCELLED and store.get_job(job.id).finished
    with pytest.raises(NotFoundError):
        store.transition_job("nope", (JOB_RUNNING,), JOB_FAILED, "")
    assert store.list_jobs(status=JOB_RUNNING) == []
    assert [j.id for j in store.list_jobs("train", status=JOB_CANCELLED)] == [job.id]
    with_pid = store.set_job_process(job.id, 42, owner=JOB_OWNER_SERVER, runner_id="r", runner_pid=7)
    assert (with_pid.pid, with_pid.owner, with_pid.runner_id, with_pid.runner_pid) == (42, JOB_OWNER_SERVER, "r", 7)
    assert store.set_job_process(job.id, None).owner == JOB_OWNER_SERVER
    with pytest.raises(ConflictError):
        store.create_job("train", "m", "/o", {}, job_id=job.id)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread and process priorities are set on Linux")
def test_a_job_process_runs_below_the_server(store: Store, data_dir: Path, runners: list[JobRunner]) -> None:
    """Jobs are lowered as far as the server's inference compute (control.priority), and so are the threads
    they start."""
    report = data_dir / "nice.txt"
    runner = new_runner(runners, store, data_dir, stand_in(
        "import os, threading, time\n"
        "time.sleep(0.5)\n"  # the runner lowers the process right after starting it
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))\n"
        "t.start(); t.join()\n"
        f"open({str(report)!r}, 'w').write(f'{{os.getpriority(os.PRIO_PROCESS, 0)}} {{seen[0]}}')\n"))
    job = runner.start_batch_embed("toy", "m")
    runner.wait(job.id, timeout=30)
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + COMPUTE_NICE)
    assert report.read_text().split() == [str(expected), str(expected)]
