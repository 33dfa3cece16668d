"""Admin tokens (the web UI's and admin API's credential), stored hashed and compared in constant time."""

from __future__ import annotations

import sqlalchemy as sa

from e5studio.control.database import Database, new_id, now
from e5studio.control.keys import ADMIN_TOKEN_PREFIX, hash_key, new_key, verify_key
from e5studio.control.schema import admin_tokens, web_sessions


class AdminTokenTable(Database):
    def ensure_admin_token(self) -> str | None:
        """Create the admin token on first start and return it in clear; None when one already exists."""
        token = new_key(ADMIN_TOKEN_PREFIX)
        with self._write() as conn:
            if conn.execute(sa.select(admin_tokens.c.id).limit(1)).first():
                return None
            conn.execute(admin_tokens.insert().values(id=new_id(), token_hash=hash_key(token), created_at=now()))
        return token

    def check_admin_token(self, token: str) -> bool:
        """Whether ``token`` is a current admin token; every stored hash is compared in constant time."""
        hashes = [row["token_hash"] for row in self._read_all(sa.select(admin_tokens.c.token_hash))]
        matches = [verify_key(token, stored) for stored in hashes]
        return any(matches)

    def rotate_admin_token(self) -> str:
        """Replace every admin token with a new one and return it in clear. Every web session ends with the old
        token (in the same transaction): a session was opened with a token, and whoever held that token must not
        keep access through a cookie. Sessions are in the shared store, so this holds on every replica at its
        next request."""
        token = new_key(ADMIN_TOKEN_PREFIX)
        with self._write() as conn:
            conn.execute(web_sessions.delete())
            conn.execute(admin_tokens.delete())
            conn.execute(admin_tokens.insert().values(id=new_id(), token_hash=hash_key(token), created_at=now()))
        return token
