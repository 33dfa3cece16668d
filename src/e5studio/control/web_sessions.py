"""Web UI sessions in the store, so every server sharing it knows every session: each row is the SHA-256 of a
session id (the id itself lives only in the browser's cookie), its expiry, and its one-time messages (flashes),
which the web layer encrypts with a key derived from the session id before they get here."""

from __future__ import annotations

import json
import time

import sqlalchemy as sa

from e5studio.control.database import Database
from e5studio.control.schema import web_sessions

_S = web_sessions.c


class WebSessionTable(Database):
    def create_web_session(self, id_hash: str, expires_at: float, *, now_s: float | None = None) -> None:
        """Record a new session (and forget the expired ones)."""
        at = time.time() if now_s is None else now_s
        with self._write(serial=False) as conn:
            conn.execute(web_sessions.delete().where(_S.expires_at < at))
            conn.execute(web_sessions.insert().values(id_hash=id_hash, expires_at=expires_at, flashes="{}"))

    def web_session_expiry(self, id_hash: str, *, now_s: float | None = None) -> float | None:
        """The session's expiry, None for an unknown or expired one (an expired one is deleted)."""
        at = time.time() if now_s is None else now_s
        row = self._read_one(sa.select(_S.expires_at).where(_S.id_hash == id_hash))
        if row is None:
            return None
        if row["expires_at"] < at:
            self.delete_web_session(id_hash)
            return None
        return float(row["expires_at"])

    def delete_web_session(self, id_hash: str) -> None:
        with self._write(serial=False) as conn:
            conn.execute(web_sessions.delete().where(_S.id_hash == id_hash))

    def add_web_session_flash(self, id_hash: str, name: str, value: str) -> None:
        """Keep a one-time message (opaque text) with the session until :meth:`pop_web_session_flash`."""
        with self._write() as conn:
            row = conn.execute(sa.select(_S.flashes).where(_S.id_hash == id_hash)).first()
            if row is None:
                return
            flashes = {**json.loads(row.flashes), name: value}
            conn.execute(web_sessions.update().where(_S.id_hash == id_hash).values(flashes=json.dumps(flashes)))

    def pop_web_session_flash(self, id_hash: str, name: str) -> str | None:
        """The one-time message ``name`` of the session, removed as it is read (None when there is none)."""
        with self._write() as conn:
            row = conn.execute(sa.select(_S.flashes).where(_S.id_hash == id_hash)).first()
            flashes = json.loads(row.flashes) if row is not None else {}
            if name not in flashes:
                return None
            value = flashes.pop(name)
            conn.execute(web_sessions.update().where(_S.id_hash == id_hash).values(flashes=json.dumps(flashes)))
            return str(value)
