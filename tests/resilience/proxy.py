"""A TCP proxy between e5studio and a PostgreSQL server that a test can make fail like a real network or server:

- ``forward()``: bytes flow both ways (the normal state);
- ``hang()``: connections stay open and new ones are accepted, but no byte goes through either way: a server
  whose processes are stopped (SIGSTOP) or a partition that drops packets (a connection accepted meanwhile gets no
  upstream connection: the server never sees it; it is reset when forwarding resumes);
- ``kill()``: every connection is reset and new ones are refused: a server that was killed.

It listens on 127.0.0.1 and forwards to the server's Unix socket (or a TCP address), so only the clients that
go through the proxy see the fault: other tests sharing the session's server are not disturbed.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import threading
from urllib.parse import parse_qs, urlsplit, urlunsplit

FORWARD, HANG, KILLED = "forward", "hang", "killed"


class PgProxy:
    def __init__(self, target: str | tuple[str, int]) -> None:
        self.target = target
        self.mode = FORWARD
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._limbo: list[socket.socket] = []  # accepted while hanging: no upstream
        self._listener: socket.socket | None = None
        self.port = 0
        self._stop = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_url(cls, url: str) -> PgProxy:
        """A proxy to the server of ``url`` (``...?host=/socket/dir`` or ``host:port``)."""
        parts = urlsplit(url)
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        port = parts.port or 5432
        if socket_dir.startswith("/"):
            return cls(os.path.join(socket_dir, f".s.PGSQL.{port}"))
        return cls((parts.hostname or "127.0.0.1", port))

    def url(self, url: str) -> str:
        """``url`` pointed at this proxy (its user, password and database kept; the socket directory dropped)."""
        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def start(self) -> PgProxy:
        self._open_listener()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pg-proxy")
        self._thread.start()
        return self

    def _open_listener(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(256)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener

    def _wake(self) -> None:
        os.write(self._wake_w, b"x")

    # -- the faults ----------------------------------------------------------------------------------

    def forward(self) -> None:
        with self._lock:
            self.mode = FORWARD
            for sock in self._limbo:
                _reset(sock)
            self._limbo.clear()
            if self._listener is None:
                self._open_listener()
        self._wake()

    def hang(self) -> None:
        with self._lock:
            self.mode = HANG
        self._wake()

    def kill(self) -> None:
        """Reset every connection (RST) and refuse new ones (the listening socket is closed)."""
        with self._lock:
            self.mode = KILLED
            for pair in self._pairs:
                for sock in pair:
                    _reset(sock)
            self._pairs.clear()
            for sock in self._limbo:
                _reset(sock)
            self._limbo.clear()
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        self._wake()

    def close(self) -> None:
        self._stop = True
        self.kill()
        if self._thread is not None:
            self._thread.join(5)

    # -- the loop ------------------------------------------------------------------------------------

    def _connect_target(self) -> socket.socket:
        if isinstance(self.target, str):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.connect(self.target)
        return upstream

    def _run(self) -> None:
        while not self._stop:
            with self._lock:
                mode = self.mode
                sockets = [s for pair in self._pairs for s in pair]
                listener = self._listener
            readers = [self._wake_r]
            if listener is not None:
                readers.append(listener)  # type: ignore[arg-type]
            if mode == FORWARD:
                readers.extend(sockets)  # type: ignore[arg-type]
            selector = selectors.DefaultSelector()
            for item in readers:
                selector.register(item, selectors.EVENT_READ)
            try:
                events = selector.select(0.5)
            except (OSError, ValueError):
                selector.close()
                continue
            selector.close()
            for key, _ in events:
                item = key.fileobj
                if item == self._wake_r:
                    os.read(self._wake_r, 1024)
                elif item is listener:
                    self._accept(listener)
                else:
                    self._pump(item)  # type: ignore[arg-type]

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        with self._lock:
            if self.mode == HANG:
                self._limbo.append(client)
                return
        try:
            upstream = self._connect_target()
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._pairs.append((client, upstream))

    def _pump(self, source: socket.socket) -> None:
        with self._lock:
            pair = next((p for p in self._pairs if source in p), None)
            if pair is None or self.mode != FORWARD:
                return
        other = pair[1] if source is pair[0] else pair[0]
        try:
            data = source.recv(65536)
            if data:
                other.sendall(data)
                return
        except OSError:
            pass
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)
        for sock in pair:
            sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a killed server's kernel does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
