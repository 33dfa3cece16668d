"""Ctrl-C and SIGTERM stop a train job within 2 s, whatever it is doing.

Python runs signal handlers in the main thread between bytecodes; a long native call (a backward pass, a
large forward, a tokeniser batch) delays them for as long as it runs. So the C-level signal handler also
writes the signal number to a socket (``signal.set_wakeup_fd``), a watcher thread reads it at once, and if the
main thread has not finished stopping ``grace_s`` later, the watcher records the stop (``on_stuck``) and ends
the process with the signal's exit status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator

GRACE_S = 1.5
STOP_SIGNALS = {int(signal.SIGINT): ("Ctrl-C", 130), int(signal.SIGTERM): ("SIGTERM", 128 + int(signal.SIGTERM))}


@contextlib.contextmanager
def stops_promptly(on_stuck: Callable[[str], None], grace_s: float = GRACE_S) -> Iterator[None]:
    """Inside: a SIGINT/SIGTERM not handled by the main thread within ``grace_s`` calls ``on_stuck(how)``
    (``"Ctrl-C"``/``"SIGTERM"``) from the watcher thread and exits the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    finished = threading.Event()
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            try:
                data = reader.recv(1)
            except OSError:
                return
            if not data or finished.is_set():
                return
            if data[0] not in STOP_SIGNALS:
                continue
            how, code = STOP_SIGNALS[data[0]]
            if finished.wait(grace_s):
                return
            try:
                on_stuck(how)
            finally:
                os._exit(code)

    watcher = threading.Thread(target=watch, name="e5studio-stop-watcher", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        finished.set()
        signal.set_wakeup_fd(previous)
        writer.close()
        reader.close()
