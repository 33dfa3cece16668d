"""A train job stops within 2 s of Ctrl-C/SIGTERM even when its main thread is stuck, and says honestly
whether a checkpoint exists."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from e5studio.jobs.train.commands import stop_message

STUCK = """
import time
from e5studio.jobs.train.stop import stops_promptly
with stops_promptly(lambda how: print("recorded", how, flush=True)):
    print("ready", flush=True)
    try:
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        time.sleep(60)  # a stop that hangs (as a long native call would)
"""


def test_a_stuck_main_thread_still_stops_within_two_seconds() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", STUCK], stdout=subprocess.PIPE, text=True, env=env)
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
