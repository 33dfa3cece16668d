"""Browser sessions of the web UI: opaque random ids in an HTTP-only cookie, a CSRF token per session.

Sessions live in the server's memory (a restart logs everyone out); only a hash of each session id is
kept, and ids and CSRF tokens are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

COOKIE_NAME = "e5studio_session"
SESSION_TTL_S = 12 * 3600


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


@dataclass
class Session:
    """One logged-in browser: its CSRF token and one-time messages (a new key is shown once)."""

    csrf_token: str
    expires_at: float
    flashes: dict[str, str] = field(default_factory=dict)

    def check_csrf(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode("utf-8"), self.csrf_token.encode("utf-8"))

    def pop_flash(self, name: str) -> str | None:
        return self.flashes.pop(name, None)


class SessionStore:
    """Thread-safe map from hashed session ids to sessions, with expiry."""

    def __init__(self, ttl_s: float = SESSION_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self) -> tuple[str, Session]:
        """A new session; returns (the id to put in the cookie, the session)."""
        session_id = secrets.token_urlsafe(32)
        session = Session(csrf_token=secrets.token_urlsafe(32), expires_at=time.time() + self.ttl_s)
        with self._lock:
            self._drop_expired()
            self._sessions[_digest(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(_digest(session_id))
            if session is None:
                return None
            if session.expires_at < time.time():
                del self._sessions[_digest(session_id)]
                return None
            return session

    def delete(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(_digest(session_id), None)

    def _drop_expired(self) -> None:
        now = time.time()
        for digest in [d for d, s in self._sessions.items() if s.expires_at < now]:
            del self._sessions[digest]
