"""The operating-system side of job processes: is a pid alive (and not a zombie), is it that job's process
(a reused pid is not), signalling a process group, stopping one that outlived its server."""

from __future__ import annotations

import os
import signal
import time
from contextlib import suppress
from pathlib import Path

from e5studio.control.job_records import JOB_OWNER_SERVER, JobRecord


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (not Linux): trust kill(0)
        return True
    return state not in ("Z", "X")


def cmdline(pid: int) -> bytes | None:
    """The command line of ``pid`` (arguments joined by NUL), None where /proc cannot tell."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def is_job_process(job: JobRecord) -> bool:
    """Whether ``job.pid`` is alive and is that job's process (a reused pid is not)."""
    if job.pid is None or not pid_alive(job.pid):
        return False
    command = cmdline(job.pid)
    if command is None:
        return not Path("/proc").is_dir()  # no /proc: trust the pid; a vanished entry: gone
    if job.owner == JOB_OWNER_SERVER:  # the job id is in its arguments (--job-id, or the output path)
        return job.id.encode() in command
    return b"e5studio" in command and b"train" in command


def runner_alive(job: JobRecord) -> bool:
    """Whether the server process that owns ``job`` is still running (another server on the same data dir)."""
    return job.runner_pid > 0 and job.runner_pid != os.getpid() and pid_alive(job.runner_pid)


def signal_group(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_orphan(pid: int, timeout: float, poll_s: float = 0.1) -> None:
    """SIGTERM a job process that is not our child (its group: it leads one), SIGKILL after ``timeout``."""
    for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        signal_group(pid, sig)
        deadline = time.monotonic() + wait_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(poll_s)
        if not pid_alive(pid):
            return
