"""Pool members as the ledger reads them (docs/pools.md).

A member is an account named under its pool: ``acme~alice`` is the member ``alice`` of the
pool ``acme``. The pool and the name are each what an account id may be, and a member id
holds exactly one ``~`` (pools do not nest), so the pool of any id is read from the id alone.
"""

from __future__ import annotations

import re

from quotagate import ids
from quotagate.errors import InvalidAccountId

SEPARATOR = "~"

_PART_RE = re.compile(r"^[A-Za-z0-9._:@-]{0,127}[A-Za-z0-9_:@-]$")
"""A pool id and a member's name are each what a plain account id may be (no ``~``, as in
``quotagate.ids``)."""
_PART_BYTES_RE = re.compile(_PART_RE.pattern.encode())


def pool_of(account_id: str) -> str | None:
    """The pool of a member id; None for an account that is no member."""
    pool, separator, _ = account_id.partition(SEPARATOR)
    return pool if separator else None


def is_member_of(member_id: str, pool_id: str) -> bool:
    """True when ``member_id`` is a well-formed member of the pool ``pool_id``."""
    pool, separator, name = member_id.partition(SEPARATOR)
    return (
        bool(separator)
        and pool == pool_id
        and _PART_RE.fullmatch(pool) is not None
        and _PART_RE.fullmatch(name) is not None
    )


def is_member_of_bytes(member_id: bytes, pool_id: bytes) -> bool:
    """:func:`is_member_of` on the bytes of a stream reply (the flush's fast path)."""
    pool, separator, name = member_id.partition(b"~")
    return (
        bool(separator)
        and pool == pool_id
        and _PART_BYTES_RE.fullmatch(pool) is not None
        and _PART_BYTES_RE.fullmatch(name) is not None
    )


def check_account_or_member_id(account_id: str) -> str:
    """An account id or a member id; InvalidAccountId otherwise."""
    pool = pool_of(account_id) if isinstance(account_id, str) else None
    if pool is None:
        return ids.check_account_id(account_id)
    if not is_member_of(account_id, pool):
        raise InvalidAccountId(
            "a member id is its pool's id, '~' and a name, each 1 to 128 characters of "
            "A-Z a-z 0-9 . _ : @ -, not ending with a dot",
            field="account_id",
        )
    return account_id
