"""Refunds: a refund returns (part of) a named spend of its account, never more than it charged.

The credit script keeps, per spend being refunded, a count in Redis (what the spend charged and
what its refunds returned so far) and checks and raises it in the same script as the credit,
so concurrent refunds of one spend never pass its cost. The count is a cache of the books:
when Redis has none (the spend's first refund, a count that expired, Redis that lost its data
and was recovered) the script answers RefundNotCounted, and :func:`refund` counts the spend
here, from the outbox and the ledger, and runs the script again with that count. A count made
meanwhile by a concurrent refund is in Redis by then, and the script keeps it over ours.

Counting reads the outbox first. The flush trims a partition's outbox only from its oldest end,
and a spend's refunds come after the spend in its account's partition: while the spend itself
still waits in the outbox, so does every refund of it, and the outbox alone is the whole count
(no PostgreSQL needed, so such refunds go on during a ledger outage). Otherwise the count reads
the ledger too, in one snapshot, and takes each transaction id once: a refund flushed between
the two reads is found in the ledger, one written through is in both. Every refund is in the
outbox before it reaches the ledger, so none is missed.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import asyncpg

from quotagate.engine import CreditEngine
from quotagate.engine.results import CreditResult, RefundCount
from quotagate.errors import (
    BackendUnavailable,
    LedgerUnavailable,
    RefundNotCounted,
    SpendNotFound,
)
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
    LedgerUnavailable when the spend must be counted in the ledger and the ledger (``None``:
    not connected) cannot answer (nothing was done), and BackendUnavailable when Redis cannot.
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
    assert refund_of is not None, "the engine refuses a refund without refund_of"
    spend_id = str(uuid.UUID(refund_of))  # as the engine named its count: the canonical form
    return await credit(await count_refunds(engine, ledger, account_id, spend_id))


async def count_refunds(
    engine: CreditEngine, ledger: Ledger | None, account_id: str, spend_id: str
) -> RefundCount:
    """The spend's cost and what its refunds returned so far, from the outbox and, unless the
    spend is still in the outbox, the ledger.

    ``spend_id`` in canonical form (the engine's check makes it so).
    """
    pending = {t.id: t for t in await _outbox_transactions(engine, account_id, spend_id)}
    spend = pending.get(spend_id)
    if spend is not None:
        return _count(spend, pending.values(), account_id, spend_id)
    if ledger is None:
        raise LedgerUnavailable(_LEDGER_NEEDED + "it is not connected")
    try:
        spend, refunds = await in_transaction(
            ledger.pool, _ledger_reader(account_id, spend_id), isolation="repeatable_read",
            readonly=True,
        )  # fmt: skip
    except BackendUnavailable as exc:
        raise LedgerUnavailable(_LEDGER_NEEDED + str(exc)) from exc
    by_id = {t.id: t for t in pending.values()}
    by_id.update((t.id, t) for t in refunds)
    return _count(spend, by_id.values(), account_id, spend_id)


_LEDGER_NEEDED = (
    "this spend left the outbox, so its refunds are counted in the ledger (PostgreSQL), "
    "and nothing was done: "
)


_LedgerRead = tuple[_Txn | None, list[_Txn]]


def _ledger_reader(
    account_id: str, spend_id: str
) -> Callable[[asyncpg.Connection], Awaitable[_LedgerRead]]:
    async def read(conn: asyncpg.Connection) -> _LedgerRead:
        row = await conn.fetchrow(SPEND_SQL, spend_id)
        spend = (
            None if row is None else _Txn(spend_id, row["account_id"], row["type"], row["amount"])
        )
        rows = await conn.fetch(REFUNDS_SQL, spend_id, account_id)
        return spend, [_Txn(r["id"], account_id, "refund", r["amount"]) for r in rows]

    return read


def _count(
    spend: _Txn | None, transactions: Iterable[_Txn], account_id: str, spend_id: str
) -> RefundCount:
    """The count from the spend and the transactions seen (each id once), or SpendNotFound."""
    if (
        spend is None
        or spend.account_id != account_id
        or spend.type != "spend"
        or spend.amount >= 0
    ):
        raise SpendNotFound(f"no spend {spend_id} on this account", field="refund_of")
    refunded = sum(t.amount for t in transactions if t.type == "refund" and t.id != spend_id)
    return RefundCount(cost=-spend.amount, refunded=refunded)


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
