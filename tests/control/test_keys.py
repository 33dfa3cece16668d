"""Keys: random, hashed with SHA-256, verified in constant time."""

from __future__ import annotations

import hashlib

from e5studio.control.keys import hash_key, new_key, verify_key


def test_new_key_is_prefixed_random_and_long() -> None:
    keys = {new_key("e5s_") for _ in range(100)}
    assert len(keys) == 100
    assert all(key.startswith("e5s_") and len(key) >= 4 + 43 for key in keys)


def test_hash_is_sha256_hex() -> None:
    assert hash_key("e5s_abc") == hashlib.sha256(b"e5s_abc").hexdigest()


def test_verify_accepts_only_the_right_key() -> None:
    key = new_key("e5s_")
    stored = hash_key(key)
    assert verify_key(key, stored)
    assert not verify_key(key + "x", stored)
    assert not verify_key(new_key("e5s_"), stored)
    assert not verify_key("", stored)
    assert not verify_key("clé ünïcode", stored)
    assert not verify_key(key, "")
