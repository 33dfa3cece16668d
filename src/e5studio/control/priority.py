"""Compute below the front end: the engine's threads and the job processes run some nice levels lower than
the server's event loop.

Under overload the compute threads would otherwise take the CPU from the event loop that answers requests and
sheds load (HTTP 429), so a flood of clients would be answered more slowly exactly when answers matter
(`benchmarks/serve_load.py --overload --no-backoff` measures it; the README has the figures). Jobs
(training, batch embedding) are lowered by the same amount, so inference and jobs keep the share of the CPU
they had against each other. Only the order changes when the CPU is short; an idle machine
runs everything at full speed.
"""

from __future__ import annotations

import os
import sys

COMPUTE_NICE = 10


def lower_priority(task_id: int, steps: int = COMPUTE_NICE) -> bool:
    """Make the Linux task ``task_id`` (a thread's native id, or a process id: its main thread) ``steps`` nice
    levels lower; the threads it starts afterwards inherit that. Best effort: False where nothing changed (not
    Linux, where a thread's priority is not set this way; the task is gone; or steps <= 0)."""
    if steps <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, task_id, min(19, os.getpriority(os.PRIO_PROCESS, task_id) + steps))
    except OSError:
        return False
    return True
