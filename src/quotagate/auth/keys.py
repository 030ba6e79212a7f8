"""What an API key is: its text, its hash, its scopes, and the constant-time check.

A key reads ``qg_<id>_<secret>``: ``id`` (16 hex digits) names the key in listings and in
``keys revoke``; ``secret`` is 32 random bytes. Only the SHA-256 of the whole key is stored. A
key carries 256 bits of randomness, so a fast hash is enough (there is nothing to brute-force),
and it keeps the check at about a microsecond on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, cast

from quotagate.errors import ValidationError

Scope = Literal["admin", "service", "read", "hook", "settle"]
SCOPES: tuple[Scope, ...] = ("admin", "service", "read", "hook", "settle")
"""admin: everything. service: check, consume, holds, refunds, reads. read: reads.
hook: the reverse-proxy authz hook and /v1/me."""

KEY_PREFIX = "qg_"
_ID_HEX = 16
_MAX_KEY_CHARS = 200
"""Longer than any key we make: anything past it is refused before hashing."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as stored (never its text)."""

    id: str
    name: str
    key_hash: str
    scopes: frozenset[Scope]
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    def allows(self, scope: Scope) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh (id, key text)."""
    key_id = secrets.token_hex(_ID_HEX // 2)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    """The id part of a presented key, or None when it is not shaped like one of ours."""
    if len(key) > _MAX_KEY_CHARS or not key.startswith(KEY_PREFIX):
        return None
    key_id = key[len(KEY_PREFIX) : len(KEY_PREFIX) + _ID_HEX]
    if (
        len(key_id) != _ID_HEX
        or key[len(KEY_PREFIX) + _ID_HEX : len(KEY_PREFIX) + _ID_HEX + 1] != "_"
    ):
        return None
    return key_id


_DUMMY_HASH = hash_key("qg_0000000000000000_not-a-key")


def matches(key: str, stored: ApiKey | None) -> bool:
    """Does ``key`` hash to ``stored``'s hash? Constant time in the hash; an unknown id costs
    the same work as a known one, so timing does not tell which ids exist."""
    expected = stored.key_hash if stored is not None else _DUMMY_HASH
    same = hmac.compare_digest(hash_key(key), expected)
    return same and stored is not None


def check_scopes(scopes: Iterable[str]) -> frozenset[Scope]:
    out = frozenset(scopes)
    unknown = sorted(out - set(SCOPES))
    if unknown or not out:
        raise ValidationError(
            f"scopes must be among {', '.join(SCOPES)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "; give at least one"),
            field="scope",
        )
    return cast(frozenset[Scope], out)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 200:
        raise ValidationError("a key's name must be 1 to 200 characters", field="name")
    return name.strip()
