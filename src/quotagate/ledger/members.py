"""Pool members as the ledger reads them (docs/pools.md).

A member is an account named under its pool: ``acme~alice`` is the member ``alice`` of the
pool ``acme``. What a member id may be, and which pool it names, is decided in
:mod:`quotagate.ids`; this adds the check the flush needs: that an outbox entry's member is
one of the entry's own pool.
"""

from __future__ import annotations

import re

from quotagate import ids

pool_of = ids.pool_of
check_account_or_member_id = ids.check_account_id
"""Account ids and member ids pass the same check (``ids.ACCOUNT_ID_RE`` allows one ``~``)."""

_ID_BYTES_RE = re.compile(ids.ACCOUNT_ID_RE.pattern.encode())


def is_member_of(member_id: str, pool_id: str) -> bool:
    """True when ``member_id`` is a well-formed member of the pool ``pool_id``."""
    return ids.ACCOUNT_ID_RE.fullmatch(member_id) is not None and pool_of(member_id) == pool_id


def is_member_of_bytes(member_id: bytes, pool_id: bytes) -> bool:
    """:func:`is_member_of` on the bytes of a stream reply (the flush's fast path)."""
    pool, separator, _ = member_id.partition(b"~")
    return bool(separator) and pool == pool_id and _ID_BYTES_RE.fullmatch(member_id) is not None
