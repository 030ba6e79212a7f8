"""Idempotency: what a request's fingerprint covers, the two windows, and the record format.

The scripts write every record (each script's header says what its record holds: the request's
16-character fingerprint, then the reply fields a replay answers, space-separated). Recovery
rebuilds the records of consumes and credits from the ledger with the functions below; a test
compares their bytes with what the scripts wrote, so the two copies of the format stay one.

Two scopes of keys, each with its own window:

- ``api``: an ``Idempotency-Key`` of an API write, remembered ``ttl_seconds`` (24 hours).
- ``hook``: the ``X-Request-Id`` of a hook charge, remembered ``hook_ttl_seconds`` (minutes:
  proxies retry within seconds, and every hook request leaves a record). Its keys carry
  :data:`HOOK_KEY_PREFIX`, in Redis and in the ledger, so a proxy's request id never meets a
  service's Idempotency-Key, and recovery can tell which window a ledger row had.
"""

from __future__ import annotations

from typing import Literal

from quotagate.engine import validate

Scope = Literal["api", "hook"]

HOOK_KEY_PREFIX = "hook "
"""Marks a hook charge's idempotency key (its X-Request-Id) in Redis and in the ledger. A
space, which no key a caller passes may hold: no Idempotency-Key can pass for a hook's key."""

LEDGER_ENTRY_ID = "0-1"
"""The outbox entry id a rebuilt credit record names. No XADD ``*`` makes it (those ids start
at the time in ms), so the write-through of a replay finds nothing to copy: the transaction is
in the ledger already, which is where recovery read it."""


def scoped_key(key: str, scope: Scope) -> str:
    """The key as the scripts and the ledger see it."""
    return HOOK_KEY_PREFIX + key if scope == "hook" else key


def consume_fingerprint(resource: str, units: int, description: str, metadata: str) -> str:
    """A consume's fingerprint; ``description`` and ``metadata`` as the engine passes them
    ("" for none, metadata as sorted JSON text)."""
    return validate.fingerprint("consume", resource, units, description, metadata)


def credit_fingerprint(
    amount: int, type: str, description: str, metadata: str, refund_of: str = ""
) -> str:
    """A credit's fingerprint (grant, earn, refund, adjust; a refund names its spend)."""
    return validate.fingerprint("credit", amount, type, description, metadata, refund_of)


def grant_fingerprint(
    amount: int, source: str, priority: int, expiry: str, description: str, metadata: str
) -> str:
    """A grant's fingerprint (its terms, description and metadata; ``expiry`` as the script
    takes it: "" never, "<ms>" at that time, "+<ms>" that long after it runs)."""
    return validate.fingerprint("grant", amount, source, priority, expiry, description, metadata)


def void_fingerprint(grant_id: str, description: str) -> str:
    return validate.fingerprint("void", grant_id, description)


def consume_record(
    fingerprint: str, transaction_id: str, cost: int, available: int, balance: int
) -> str:
    """The record consume.lua writes for a charge."""
    return f"{fingerprint}{transaction_id} {cost} {available} {balance}"


def credit_record(
    fingerprint: str, transaction_id: str, balance: int, available: int, outbox_entry_id: str
) -> str:
    """The record credit.lua writes for a credit."""
    return f"{fingerprint}{transaction_id} {balance} {available} {outbox_entry_id}"
