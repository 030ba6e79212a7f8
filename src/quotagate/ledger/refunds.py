"""Refunds: a refund returns (part of) a named spend of its account, never more than it charged.

The credit script keeps, per spend being refunded, a count in Redis (what the spend charged and
what its refunds returned so far) and checks and raises it in the same script as the credit,
so concurrent refunds of one spend never pass its cost. The count is a cache of the books:
when Redis has none (the spend's first refund, a count that expired, Redis that lost its data
and was recovered) the script answers RefundNotCounted, and :func:`refund` counts the spend
here, from the outbox and the ledger, and runs the script again with that count. A count made
meanwhile by a concurrent refund is in Redis by then, and the script keeps it over ours.

Counting reads the outbox first and then the ledger, in one snapshot, and takes each
transaction id once: a refund flushed between the two reads is found in the ledger, one
written through is in both. Every refund is in the outbox before it reaches the ledger, so
none is missed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, cast

import asyncpg

from quotagate.engine import CreditEngine
from quotagate.engine.results import CreditResult, RefundCount
from quotagate.errors import BackendUnavailable, RefundNotCounted, SpendNotFound
from quotagate.ledger.ledger import Ledger
from quotagate.ledger.outbox import RawEntries, TransactionEntry, parse_entry
from quotagate.ledger.postgres import in_transaction

OUTBOX_SCAN_LIMIT = 100_000
"""Outbox entries a count reads, newest first. While the ledger keeps up that is the whole
stream; past it (the flush far behind) a refund that needs a count waits for the flush rather
than count from part of the stream."""

SCAN_CHUNK = 5000

SPEND_SQL = "SELECT account_id, type, amount FROM credit_transactions WHERE id = $1"
REFUNDS_SQL = "SELECT id, amount FROM credit_transactions WHERE refund_of = $1 AND account_id = $2"


@dataclass(frozen=True, slots=True)
class _Txn:
    """What a count needs of a transaction, from the outbox or the ledger."""

    id: str
    account_id: str
    type: str
    amount: int


async def refund(
    engine: CreditEngine,
    ledger: Ledger | None,
    account_id: str,
    amount: int,
    refund_of: str | None,
    *,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> CreditResult:
    """Refund ``amount`` of the spend ``refund_of`` to ``account_id``.

    Raises ValidationError (bad input; ``refund_of`` missing), SpendNotFound (no such spend
    on this account: unknown, another account's, or not a spend), RefundExceedsSpend, and
    BackendUnavailable when the spend must be counted and the ledger (``None``: not
    connected) cannot answer.
    """

    async def credit(counted: RefundCount | None) -> CreditResult:
        return await engine.credit(
            account_id, amount, "refund", description=description, metadata=metadata,
            idempotency_key=idempotency_key, refund_of=refund_of, counted=counted,
        )  # fmt: skip

    try:
        return await credit(None)
    except RefundNotCounted:
        pass
    if ledger is None:
        raise BackendUnavailable(
            "this spend's refunds are counted in the ledger (PostgreSQL), which is unavailable"
        )
    assert refund_of is not None, "the engine refuses a refund without refund_of"
    spend_id = str(uuid.UUID(refund_of))  # as the engine named its count: the canonical form
    return await credit(await count_refunds(engine, ledger, account_id, spend_id))


async def count_refunds(
    engine: CreditEngine, ledger: Ledger, account_id: str, spend_id: str
) -> RefundCount:
    """The spend's cost and what its refunds returned so far, from the outbox and the ledger.

    ``spend_id`` in canonical form (the engine's check makes it so).
    """
    pending = {t.id: t for t in await _outbox_transactions(engine, account_id, spend_id)}

    async def read(conn: asyncpg.Connection) -> tuple[_Txn | None, list[_Txn]]:
        row = await conn.fetchrow(SPEND_SQL, spend_id)
        spend = (
            None if row is None else _Txn(spend_id, row["account_id"], row["type"], row["amount"])
        )
        rows = await conn.fetch(REFUNDS_SQL, spend_id, account_id)
        return spend, [_Txn(r["id"], account_id, "refund", r["amount"]) for r in rows]

    spend, refunds = await in_transaction(
        ledger.pool, read, isolation="repeatable_read", readonly=True
    )
    spend = spend or pending.get(spend_id)
    if (
        spend is None
        or spend.account_id != account_id
        or spend.type != "spend"
        or spend.amount >= 0
    ):
        raise SpendNotFound(f"no spend {spend_id} on this account", field="refund_of")
    by_id = {t.id: t for t in pending.values() if t.type == "refund"}
    by_id.update((t.id, t) for t in refunds)
    return RefundCount(cost=-spend.amount, refunded=sum(t.amount for t in by_id.values()))


async def _outbox_transactions(engine: CreditEngine, account_id: str, spend_id: str) -> list[_Txn]:
    """The spend and its refunds, as far as they wait in the account's partition outbox (read
    newest first, all of it; BackendUnavailable past OUTBOX_SCAN_LIMIT)."""
    key = engine.keys.outbox(engine.keys.partition_of(account_id))
    found: list[_Txn] = []
    end, scanned = "+", 0
    while True:
        raw = cast(RawEntries, await engine.redis.xrevrange(key, end, "-", count=SCAN_CHUNK))
        found.extend(_of_spend(raw, account_id, spend_id))
        scanned += len(raw)
        if len(raw) < SCAN_CHUNK:
            return found
        if scanned >= OUTBOX_SCAN_LIMIT:
            raise BackendUnavailable(
                "the outbox is too far behind the ledger to count this spend's refunds; "
                "retry once the flush has caught up"
            )
        end = "(" + raw[-1][0]


def _of_spend(raw: RawEntries, account_id: str, spend_id: str) -> list[_Txn]:
    found = []
    for stream_id, fields in raw:
        if fields.get("a") != account_id or spend_id not in (fields.get("id"), fields.get("rf")):
            continue
        entry = parse_entry(stream_id, fields)
        assert isinstance(entry, TransactionEntry), "an entry with an id and an account"
        found.append(_Txn(entry.id, entry.account_id, entry.type, entry.amount))
    return found
