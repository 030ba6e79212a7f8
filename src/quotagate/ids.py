"""Identifiers: transaction and hold ids, and the checks on ids that come from outside."""

from __future__ import annotations

import base64
import os
import random
import re
import threading
import time
import uuid

from quotagate.errors import InvalidAccountId, ValidationError

_PLAIN_ID = r"[A-Za-z0-9._:@-]{0,127}[A-Za-z0-9_:@-]"
ACCOUNT_ID_RE = re.compile(rf"^{_PLAIN_ID}(?:~{_PLAIN_ID})?$")
"""1 to 128 characters of A-Z a-z 0-9 . _ : @ -, not ending with a dot: an id is a segment of
URL paths, where ``.`` and ``..`` are dot segments that clients resolve before sending, and
servers that drop a segment's trailing dots (Windows) would read ``alice.`` as ``alice``.
A member of a pool is the pool's id, ``~`` and the member's name, each such an id (``~`` is in
no other id, and only once: pools do not nest)."""
MEMBER_SEPARATOR = "~"
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
"""Idempotency keys: 1-255 printable ASCII characters, no spaces (request ids, UUIDs...)."""

_lock = threading.Lock()
_last_ms = 0
_seq = 0
_rng = random.Random(os.urandom(32))
"""The random bits of ids: seeded from the OS once per process, not a getrandom() call per id
(two syscalls per charge). Unique, not secret: ids are not credentials."""


def _reseed() -> None:  # a forked child must not repeat its parent's sequence
    _rng.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, unique, made before the script that uses it.

    Within one millisecond a 12-bit counter keeps ids of this process increasing;
    62 random bits keep processes apart.
    """
    global _last_ms, _seq
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _seq = ms, _rng.getrandbits(10)
        else:
            _seq += 1
            if _seq > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms, _seq = _last_ms + 1, 0
            ms = _last_ms
        seq = _seq
    rand = _rng.getrandbits(62)
    # str(uuid.UUID(...)) of ms (48 bits), version 7, seq (12), variant 0b10, rand (62), faster.
    return (
        f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7{seq:03x}-{0x8000 | rand >> 48:04x}-"
        f"{rand & 0xFFFFFFFFFFFF:012x}"
    )


def check_account_id(account_id: str) -> str:
    if not isinstance(account_id, str) or not ACCOUNT_ID_RE.fullmatch(account_id):
        raise InvalidAccountId(
            "account id must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ -, "
            "not ending with a dot (a pool's member: <pool>~<name>, each such an id)",
            field="account_id",
        )
    return account_id


def pool_of(account_id: str) -> str | None:
    """The pool an account is a member of (the part of its id before ``~``), or None."""
    pool, sep, _ = account_id.partition(MEMBER_SEPARATOR)
    return pool if sep else None


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise ValidationError(
            "idempotency key must be 1 to 255 printable ASCII characters without spaces",
            field="idempotency_key",
        )
    return key


def check_hold_id(hold_id: str) -> str:
    try:
        return str(uuid.UUID(hold_id))
    except (ValueError, TypeError, AttributeError):
        raise ValidationError("hold id must be a UUID", field="hold_id") from None


_ACCOUNT_HOLD_ID = re.compile(r"^([A-Za-z0-9_-]{2,171})\.([0-9a-f-]{36})$")


def account_hold_id(account_id: str, hold_id: str) -> str:
    """The id of a hold that names its account: the account id in base64url (no padding), a
    dot, the hold's UUID. A settle finds the account (and so the partition, one Redis Cluster
    slot) from it alone, and looks the UUID up among that account's holds only: naming
    another account finds none of this one's."""
    encoded = base64.urlsafe_b64encode(account_id.encode()).rstrip(b"=").decode()
    return f"{encoded}.{hold_id}"


def split_account_hold_id(text: str) -> tuple[str, str]:
    """The account id and hold UUID of :func:`account_hold_id`'s text; ValidationError when
    ``text`` is not one (only the canonical spelling is: one hold, one id)."""
    match = _ACCOUNT_HOLD_ID.match(text) if isinstance(text, str) else None
    account_id = _decoded_account(match[1]) if match else None
    if match is None or account_id is None or account_hold_id(account_id, match[2]) != text:
        raise ValidationError(
            "hold id must be one the hook gave (X-Quota-Hold-Id): the account in base64url, "
            "a dot, a UUID",
            field="hold_id",
        )
    return account_id, check_hold_id(match[2])


def _decoded_account(encoded: str) -> str | None:
    try:
        padded = encoded + "=" * (-len(encoded) % 4)
        account_id = base64.urlsafe_b64decode(padded).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    return account_id if ACCOUNT_ID_RE.fullmatch(account_id) else None
