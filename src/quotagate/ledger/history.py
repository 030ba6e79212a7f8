"""An account's transactions, newest first: the ledger's rows merged with what still waits.

A transaction is in the ledger, in the outbox, or (briefly: written through, or flushed but
not yet deleted) in both. We read the outbox first, then in one PostgreSQL snapshot the page
of rows and which of the outbox's transactions the ledger already holds; an entry flushed
between the two reads is then found in the ledger and shown once. Entries not in the ledger
come back with ``pending=True``.

Order is (created_at, id) descending; ``before=<transaction id>`` continues after that
transaction. The outbox has no index by account, so the read walks it from its newest end,
at most ``PENDING_SCAN_LIMIT`` entries: while the ledger keeps up that is the whole stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg

from quotagate.engine import CreditEngine
from quotagate.errors import ValidationError
from quotagate.ledger.outbox import RawEntries, TransactionEntry, parse_entry

MAX_LIMIT = 1000
"""Largest page a history read returns."""

PENDING_SCAN_LIMIT = 100_000
"""Outbox entries a history read looks at, newest first. Beyond it (the ledger far behind),
older pending entries are left out of the page rather than make the read slow."""

SCAN_CHUNK = 5000

_ROW_COLUMNS = (
    "id, account_id, amount, type, resource, units, description, metadata::text AS metadata, "
    "created_at, balance_after"
)
PAGE_SQL = f"""
SELECT {_ROW_COLUMNS} FROM credit_transactions
WHERE account_id = $1
ORDER BY created_at DESC, id DESC
LIMIT $2
"""
PAGE_BEFORE_SQL = f"""
SELECT {_ROW_COLUMNS} FROM credit_transactions
WHERE account_id = $1 AND (created_at, id) < ($3, $4)
ORDER BY created_at DESC, id DESC
LIMIT $2
"""
CURSOR_SQL = "SELECT created_at FROM credit_transactions WHERE id = $1 AND account_id = $2"
PRESENT_SQL = "SELECT id FROM credit_transactions WHERE id = ANY($1::text[])"


@dataclass(frozen=True, slots=True)
class Transaction:
    id: str
    account_id: str
    amount: int
    type: str
    resource: str | None
    units: int | None
    description: str | None
    metadata: dict[str, Any] | None
    created_at: datetime
    balance_after: int
    pending: bool
    """True while the transaction is only in the outbox (not yet in PostgreSQL)."""


@dataclass(frozen=True, slots=True)
class HistoryPage:
    transactions: list[Transaction]
    next: str | None
    """Pass as ``before`` for the next page; None on the last page."""


def _ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _from_entry(e: TransactionEntry) -> Transaction:
    return Transaction(
        id=e.id,
        account_id=e.account_id,
        amount=e.amount,
        type=e.type,
        resource=e.resource,
        units=e.units,
        description=e.description,
        metadata=json.loads(e.metadata) if e.metadata else None,
        created_at=_ms_to_dt(e.created_ms),
        balance_after=e.balance_after,
        pending=True,
    )


def _from_row(r: asyncpg.Record) -> Transaction:
    return Transaction(
        id=r["id"],
        account_id=r["account_id"],
        amount=r["amount"],
        type=r["type"],
        resource=r["resource"],
        units=r["units"],
        description=r["description"],
        metadata=json.loads(r["metadata"]) if r["metadata"] is not None else None,
        created_at=r["created_at"],
        balance_after=r["balance_after"],
        pending=False,
    )


def check_page(limit: int, before: str | None) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit")
    if before is not None and (not isinstance(before, str) or not 1 <= len(before) <= 64):
        raise ValidationError("before must be a transaction id", field="before")


async def outbox_transactions(engine: CreditEngine, account_id: str) -> list[TransactionEntry]:
    """The account's transactions in its partition's outbox, newest first."""
    key = engine.keys.outbox(engine.keys.partition_of(account_id))
    found: list[TransactionEntry] = []
    end, scanned = "+", 0
    while scanned < PENDING_SCAN_LIMIT:
        want = min(SCAN_CHUNK, PENDING_SCAN_LIMIT - scanned)
        raw = cast(RawEntries, await engine.redis.xrevrange(key, end, "-", count=want))
        scanned += len(raw)
        for stream_id, fields in raw:
            if fields.get("a") == account_id and fields.get("t") != "account":
                entry = parse_entry(stream_id, fields)
                assert isinstance(entry, TransactionEntry)
                found.append(entry)
        if len(raw) < want:
            break
        end = "(" + raw[-1][0]
    return found


async def read_page(
    conn: asyncpg.Connection,
    account_id: str,
    outbox: list[TransactionEntry],
    limit: int,
    before: str | None,
) -> HistoryPage:
    """The page, inside the caller's (repeatable read) transaction."""
    cursor: tuple[datetime, str] | None = None
    if before is not None:
        waiting = next((e for e in outbox if e.id == before), None)
        if waiting is not None:
            cursor = (_ms_to_dt(waiting.created_ms), waiting.id)
        else:
            at = await conn.fetchval(CURSOR_SQL, before, account_id)
            if at is None:
                raise ValidationError(
                    "before does not name a transaction of this account", field="before"
                )
            cursor = (at, before)
    present = set()
    if outbox:
        present = {r["id"] for r in await conn.fetch(PRESENT_SQL, [e.id for e in outbox])}
    if cursor is None:
        rows = await conn.fetch(PAGE_SQL, account_id, limit + 1)
    else:
        rows = await conn.fetch(PAGE_BEFORE_SQL, account_id, limit + 1, *cursor)
    merged = [_from_row(r) for r in rows]
    merged += [_from_entry(e) for e in outbox if e.id not in present]
    if cursor is not None:
        merged = [t for t in merged if (t.created_at, t.id) < cursor]
    merged.sort(key=lambda t: (t.created_at, t.id), reverse=True)
    page = merged[:limit]
    more = len(merged) > limit
    return HistoryPage(page, page[-1].id if more else None)
