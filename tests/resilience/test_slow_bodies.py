"""Issue 25, point 6: slow bodies on real sockets. Many connections send the headers and half the body of an
inference request (with a valid key: past authentication, waiting for the body) and stall, while 8 normal clients
keep sending to the same ``e5studio serve``: every stalled connection gets HTTP 408 within its deadline, the
normal clients' requests all succeed, and the server's file descriptors and memory return to their baseline.

The default suite opens 48 stalled connections; the ``slow`` test opens 500 (the issue's figure). The latency
ratio (normal clients loaded vs unloaded, target 2x) is a speed figure: ``benchmarks/slow_bodies.py`` prints it,
no test asserts a timing."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from benchmarks.slow_bodies import Figures, measure

from tests.serving.server import ServerProcess

BODY_TIMEOUT_S = 2.0
LATE_S = 5.0  # a busy machine's scheduling (2 cores shared by several suites, load 10), on top of the deadline
# The deadline runs from when a request's first bytes reached the machine (the kernel's age of them, read when the
# server gets to the connection); the 408s of connections opened all at once come due together and are written in
# turn, a fraction of a millisecond each on this machine: the last of a flood goes out that much later.
ANSWERED_IN_TURN_S = 0.008
MEMORY_GROWTH_MB = 40.0  # allocator slack: the connections' buffers are freed, not necessarily returned at once


def run(tmp_path: Path, tiny_dir: Path, stalled: int) -> Figures:
    server = ServerProcess(tmp_path / "data", tmp_path / "logs", "--threads", "1", "--body-timeout",
                           str(BODY_TIMEOUT_S), model=str(tiny_dir))
    server.start()
    try:
        banner = server.banner()
        assert server._proc is not None  # noqa: SLF001
        figures = measure(server.base_url, server._proc.pid, urlsplit(banner.url).path, banner.key,  # noqa: SLF001
                          stalled=stalled, clients=8, body_timeout_s=BODY_TIMEOUT_S, unloaded_s=2.0)
    finally:
        code = server.stop()
    print("\n".join(figures.lines()))
    assert code == 0
    assert "Traceback" not in server.stderr(), server.stderr()[-3000:]
    return figures


def check(figures: Figures) -> None:
    assert figures.answers_408 == figures.stalled, figures.lines()
    assert not figures.other_answers and figures.unanswered == 0, figures.lines()
    assert figures.latest_408_s <= figures.deadline_s + LATE_S + ANSWERED_IN_TURN_S * figures.stalled, figures.lines()
    assert not figures.client_errors, figures.client_errors[:5]
    assert figures.unloaded_ms and figures.loaded_ms, figures.lines()  # the normal clients were served meanwhile
    assert figures.fds["most while stalled"] >= figures.fds["before"] + figures.stalled * 0.9, figures.fds  # held
    assert figures.fds["after"] <= figures.fds["before"], figures.fds
    assert figures.rss_mb["after"] <= figures.rss_mb["before"] + MEMORY_GROWTH_MB, figures.rss_mb


def test_stalled_bodies_get_408_and_leave_nothing_behind(tmp_path: Path, tiny_dir: Path) -> None:
    check(run(tmp_path, tiny_dir, 48))


@pytest.mark.slow
def test_500_stalled_bodies_get_408_and_leave_nothing_behind(tmp_path: Path, tiny_dir: Path) -> None:
    check(run(tmp_path, tiny_dir, 500))
