"""Admin tokens (the web UI's and admin API's credential), stored hashed and compared in constant time."""

from __future__ import annotations

from e5studio.control.database import Database, new_id, now
from e5studio.control.keys import ADMIN_TOKEN_PREFIX, hash_key, new_key, verify_key


class AdminTokenTable(Database):
    def ensure_admin_token(self) -> str | None:
        """Create the admin token on first start and return it in clear; None when one already exists."""
        token = new_key(ADMIN_TOKEN_PREFIX)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM admin_tokens LIMIT 1").fetchone():
                return None
            conn.execute(
                "INSERT INTO admin_tokens (id, token_hash, created_at) VALUES (?, ?, ?)",
                (new_id(), hash_key(token), now()),
            )
        return token

    def check_admin_token(self, token: str) -> bool:
        """Whether ``token`` is a current admin token; every stored hash is compared in constant time."""
        hashes = [row["token_hash"] for row in self._read_all("SELECT token_hash FROM admin_tokens")]
        matches = [verify_key(token, stored) for stored in hashes]
        return any(matches)

    def rotate_admin_token(self) -> str:
        """Replace every admin token with a new one and return it in clear."""
        token = new_key(ADMIN_TOKEN_PREFIX)
        with self._write() as conn:
            conn.execute("DELETE FROM admin_tokens")
            conn.execute(
                "INSERT INTO admin_tokens (id, token_hash, created_at) VALUES (?, ?, ?)",
                (new_id(), hash_key(token), now()),
            )
        return token
