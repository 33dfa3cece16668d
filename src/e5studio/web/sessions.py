"""Browser sessions of the web UI: opaque random ids in an HTTP-only cookie, a CSRF token per session.

Sessions live in the control store (every server sharing it knows every session: a login on one replica
works on the others, a logout on one ends it on all). The store keeps only the SHA-256 of each session id and
its expiry; the CSRF token is derived from the session id (HMAC), so it is never stored; one-time messages
(a new key, shown once) are encrypted with a key derived from the session id as well (SHAKE-256 keystream,
HMAC-SHA-256 tag), so nothing in the store reveals them. Ids and CSRF tokens are compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

COOKIE_NAME = "e5studio_session"
SESSION_TTL_S = 12 * 3600
_NONCE_BYTES = 16
_TAG_BYTES = 16


class SessionRecords(Protocol):
    """Where sessions are kept (the control store: ``e5studio.control.web_sessions``)."""

    def create_web_session(self, id_hash: str, expires_at: float) -> None: ...

    def web_session_expiry(self, id_hash: str) -> float | None: ...

    def delete_web_session(self, id_hash: str) -> None: ...

    def add_web_session_flash(self, id_hash: str, name: str, value: str) -> None: ...

    def pop_web_session_flash(self, id_hash: str, name: str) -> str | None: ...


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def _derived(session_id: str, purpose: bytes) -> bytes:
    return hmac.new(session_id.encode("utf-8"), b"e5studio session " + purpose, hashlib.sha256).digest()


def seal(session_id: str, text: str) -> str:
    """``text`` encrypted and authenticated with a key only the session id gives."""
    key = _derived(session_id, b"flash")
    nonce = secrets.token_bytes(_NONCE_BYTES)
    data = text.encode("utf-8")
    stream = hashlib.shake_256(key + nonce).digest(len(data))
    body = nonce + bytes(a ^ b for a, b in zip(data, stream, strict=True))
    tag = hmac.new(key, body, hashlib.sha256).digest()[:_TAG_BYTES]
    return base64.urlsafe_b64encode(body + tag).decode("ascii")


def unseal(session_id: str, sealed: str) -> str | None:
    """The text :func:`seal` encrypted, or None when it was not sealed for this session (or was altered)."""
    key = _derived(session_id, b"flash")
    try:
        raw = base64.urlsafe_b64decode(sealed.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
    expected = hmac.new(key, body, hashlib.sha256).digest()[:_TAG_BYTES]
    if len(body) < _NONCE_BYTES or not hmac.compare_digest(tag, expected):
        return None
    nonce, data = body[:_NONCE_BYTES], body[_NONCE_BYTES:]
    stream = hashlib.shake_256(key + nonce).digest(len(data))
    return bytes(a ^ b for a, b in zip(data, stream, strict=True)).decode("utf-8", errors="replace")


@dataclass
class Session:
    """One logged-in browser: its CSRF token and one-time messages (a new key is shown once)."""

    csrf_token: str
    expires_at: float
    _flash: Callable[[str, str], None]
    _pop_flash: Callable[[str], str | None]

    def check_csrf(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode("utf-8"), self.csrf_token.encode("utf-8"))

    def flash(self, name: str, value: str) -> None:
        """Keep ``value`` for the next page that asks for ``name`` (on any server sharing the store)."""
        self._flash(name, value)

    def pop_flash(self, name: str) -> str | None:
        return self._pop_flash(name)


class SessionStore:
    """Sessions by id (only a hash of the id is kept), with expiry, over the control store; thread-safe."""

    def __init__(self, records: SessionRecords, ttl_s: float = SESSION_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._records = records

    def create(self) -> tuple[str, Session]:
        """A new session; returns (the id to put in the cookie, the session)."""
        session_id = secrets.token_urlsafe(32)
        expires_at = time.time() + self.ttl_s
        self._records.create_web_session(_digest(session_id), expires_at)
        return session_id, self._session(session_id, expires_at)

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        expires_at = self._records.web_session_expiry(_digest(session_id))
        return None if expires_at is None else self._session(session_id, expires_at)

    def delete(self, session_id: str | None) -> None:
        if session_id:
            self._records.delete_web_session(_digest(session_id))

    def _session(self, session_id: str, expires_at: float) -> Session:
        digest = _digest(session_id)

        def flash(name: str, value: str) -> None:
            self._records.add_web_session_flash(digest, name, seal(session_id, value))

        def pop_flash(name: str) -> str | None:
            sealed = self._records.pop_web_session_flash(digest, name)
            return None if sealed is None else unseal(session_id, sealed)

        csrf = base64.urlsafe_b64encode(_derived(session_id, b"csrf")).decode("ascii").rstrip("=")
        return Session(csrf_token=csrf, expires_at=expires_at, _flash=flash, _pop_flash=pop_flash)
