"""API keys and admin tokens: random generation, hashing for storage, constant-time verification.

Only the hash of a key is stored. Keys are 256-bit random strings from :mod:`secrets`, not
user-chosen passwords, so nothing can be guessed or brute-forced from the hash and a fast hash
(SHA-256) is the right choice; a slow password hash (bcrypt, scrypt) would only add latency to every
request. Comparisons use :func:`hmac.compare_digest` so timing leaks nothing (datasette ``tokens.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ENDPOINT_KEY_PREFIX = "e5s_"
ADMIN_TOKEN_PREFIX = "e5sadm_"
DISPLAY_PREFIX_CHARS = 8  # how much of a key is kept in clear to tell keys apart ("e5s_AbCd")


def new_key(prefix: str = ENDPOINT_KEY_PREFIX) -> str:
    """A fresh random key: ``prefix`` followed by 32 random bytes, URL-safe base64 (43 characters)."""
    return prefix + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """SHA-256 hex digest of the key, the only form that is stored.

    A fast hash is deliberate: keys are high-entropy random values, not passwords, so there is no
    dictionary to guard against and key stretching would only slow every authenticated request.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def verify_key(key: str, stored_hash: str) -> bool:
    """Whether ``key`` hashes to ``stored_hash``, compared in constant time."""
    return hmac.compare_digest(hash_key(key).encode("ascii"), stored_hash.encode("utf-8"))


def display_prefix(key: str) -> str:
    """The short clear-text start of a key, stored and shown so a user can tell their keys apart."""
    return key[:DISPLAY_PREFIX_CHARS]
