"""A train job stops within 2 s of Ctrl-C/SIGTERM even when its main thread is stuck, and says honestly
whether a checkpoint exists.

The children these tests send Ctrl-C get the default SIGINT handler back (a suite started with SIGINT ignored,
by ``nohup`` or a shell's ``cmd &``, would hand its children the ignored signal), and every child is killed
when its test ends, passed or failed (a failed test would otherwise leave it looping)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e5studio.control.store import Store
from e5studio.jobs.train.commands import stop_message
from tests import stores
from tests.jobs.test_train_job_id import FLAGS, data_dir  # noqa: F401 - data_dir is a fixture

STOP_S = 2.0  # a Ctrl-C'd evaluation stops within this (the process gone, its record written)
BUSY_SLACK_S = 1.0  # the suite runs on worker processes that share the cores: scheduling on top

STUCK = """
import time
from e5studio.jobs.train.stop import stops_promptly
with stops_promptly(lambda how: print("recorded", how, flush=True)):
    try:
        print("ready", flush=True)  # inside the try: the signal cannot land before it
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        time.sleep(60)  # a stop that hangs (as a long native call would)
"""


Spawn = Callable[..., "subprocess.Popen[str]"]


def _default_sigint() -> None:  # in the child, before exec: Python installs KeyboardInterrupt only over SIG_DFL
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start a child that Ctrl-C reaches, whatever this process does with SIGINT; killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(args, text=True, preexec_fn=_default_sigint, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(params=["sigint-default", "sigint-ignored"])
def suite_sigint(request: pytest.FixtureRequest) -> Iterator[None]:
    """The suite as started from a terminal, or with SIGINT ignored (``nohup``, ``cmd &``)."""
    previous = signal.getsignal(signal.SIGINT)
    if request.param == "sigint-ignored":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_stuck_main_thread_still_stops_within_two_seconds(suite_sigint: None, spawn: Spawn) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = spawn([sys.executable, "-c", STUCK], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 130
    assert time.monotonic() - t0 < 2.0
    assert "recorded Ctrl-C" in proc.stdout.read()


def test_stop_message_says_when_no_checkpoint_exists(tmp_path: Path) -> None:
    message = stop_message(tmp_path, "Ctrl-C")
    assert message.startswith("interrupted (Ctrl-C); no checkpoint yet"), message
    assert "`e5studio train ... --resume` starts again from step 0" in message


def test_ctrl_c_during_the_evaluation_before_training(data_dir: Path, tiny_nodropout_dir: Path,  # noqa: F811
                                                      shared_data_dir: Path, tmp_path: Path, spawn: Spawn) -> None:
    """A real `e5studio train` evaluating on SciFact's 5,183 passages stops within 2 s of Ctrl-C, records the
    job Interrupted and says that no checkpoint exists yet."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "E5STUDIO_DEVICE": "cpu"}
    output = tmp_path / "out"
    args = ["train", "--dataset", "toy", "--model", str(tiny_nodropout_dir), "--output", str(output),
            "--data-dir", str(data_dir), *[f for f in FLAGS if f != "--no-progress"],
            "--eval-dir", str(shared_data_dir / "scifact"), "--eval-max-queries", "10"]
    proc = spawn([sys.executable, "-m", "e5studio", *args], stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "evaluation before training: embedding passages" in line:
            break
    else:
        raise AssertionError("".join(seen))
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code = proc.wait(30)
    took = time.monotonic() - t0
    rest = proc.stderr.read()
    assert code == 130, rest
    assert took < STOP_S + BUSY_SLACK_S, took
    assert "interrupted (Ctrl-C); no checkpoint yet" in rest and "starts again from step 0" in rest, rest
    with Store(stores.store_for(data_dir)) as store:
        (job,) = store.list_jobs()
    assert job.status == "Interrupted" and "no checkpoint yet" in job.status_reason
