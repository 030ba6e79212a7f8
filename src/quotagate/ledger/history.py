"""An account's transactions, newest first: the ledger's rows merged with what still waits.

A transaction is in the ledger, in the outbox, or (briefly: written through, or flushed but
not yet deleted) in both. We read the outbox first, then in one PostgreSQL snapshot the page
of rows and which of the outbox's transactions the ledger already holds; an entry flushed
between the two reads is then found in the ledger and shown once. Entries not in the ledger
come back with ``pending=True``.

A pool's member (docs/pools.md) has two kinds of rows: its own, and its pool's spends that
name it (``member_id``: what the pool paid for its charges). Its history lists both, from the
ledger and from the outbox (both in the one partition of the pool).

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
from quotagate.ledger import members
from quotagate.ledger.outbox import RawEntries, TransactionEntry, parse_entry

MAX_LIMIT = 1000
"""Largest page a history read returns."""

PENDING_SCAN_LIMIT = 100_000
"""Outbox entries a history read looks at, newest first. Beyond it (the ledger far behind),
older pending entries are left out of the page rather than make the read slow."""

SCAN_CHUNK = 5000

_ROW_COLUMNS = (
    "id, account_id, amount, type, resource, units, description, metadata::text AS metadata, "
    "created_at, balance_after, member_id"
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
_MEMBER_PAGE_SQL = """
(SELECT {columns} FROM credit_transactions
 WHERE account_id = $1{before}
 ORDER BY created_at DESC, id DESC LIMIT $2)
UNION ALL
(SELECT {columns} FROM credit_transactions
 WHERE account_id = $3 AND member_id = $1{before}
 ORDER BY created_at DESC, id DESC LIMIT $2)
ORDER BY created_at DESC, id DESC
LIMIT $2
"""
# Two index scans, each stopping at the page's length: the member's own rows, and its pool's
# rows that name it (ix_credit_transactions_member_history).
MEMBER_PAGE_SQL = _MEMBER_PAGE_SQL.format(columns=_ROW_COLUMNS, before="")
MEMBER_PAGE_BEFORE_SQL = _MEMBER_PAGE_SQL.format(
    columns=_ROW_COLUMNS, before=" AND (created_at, id) < ($4, $5)"
)
CURSOR_SQL = "SELECT created_at FROM credit_transactions WHERE id = $1 AND account_id = $2"
MEMBER_CURSOR_SQL = """
SELECT created_at FROM credit_transactions
WHERE id = $1 AND (account_id = $2 OR (account_id = $3 AND member_id = $2))
"""
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
    member_id: str | None = None
    """On a pool's spend: the member whose charge the pool paid."""


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
        member_id=e.member_id,
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
        member_id=r["member_id"],
    )


def check_page(limit: int, before: str | None) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit")
    if before is not None and (not isinstance(before, str) or not 1 <= len(before) <= 64):
        raise ValidationError("before must be a transaction id", field="before")


def is_own_or_paid_for(fields: dict[str, str], account_id: str, pool_id: str | None) -> bool:
    """True for an outbox transaction of the account, or (``pool_id``: the account is its
    member) for its pool's spend that names it."""
    if fields.get("t") == "account":
        return False
    owner = fields.get("a")
    return owner == account_id or (
        pool_id is not None and owner == pool_id and fields.get("pm") == account_id
    )


def partitions_of(engine: CreditEngine, account_id: str) -> list[int]:
    """The partitions whose outbox may hold entries of the account: its own and, for a
    member, its pool's (one and the same, as the pool's id decides a member's partition)."""
    pool_id = members.pool_of(account_id)
    found = [engine.keys.partition_of(account_id)]
    if pool_id is not None:
        found.append(engine.keys.partition_of(pool_id))
    return list(dict.fromkeys(found))


async def outbox_transactions(engine: CreditEngine, account_id: str) -> list[TransactionEntry]:
    """The account's transactions in the outbox (and, for a member, its pool's spends that
    name it), newest first."""
    pool_id = members.pool_of(account_id)
    found: list[TransactionEntry] = []
    for partition in partitions_of(engine, account_id):
        key = engine.keys.outbox(partition)
        end, scanned = "+", 0
        while scanned < PENDING_SCAN_LIMIT:
            want = min(SCAN_CHUNK, PENDING_SCAN_LIMIT - scanned)
            raw = cast(RawEntries, await engine.redis.xrevrange(key, end, "-", count=want))
            scanned += len(raw)
            for stream_id, fields in raw:
                if is_own_or_paid_for(fields, account_id, pool_id):
                    entry = parse_entry(stream_id, fields)
                    assert isinstance(entry, TransactionEntry)
                    found.append(entry)
            if len(raw) < want:
                break
            end = "(" + raw[-1][0]
    found.sort(key=lambda e: (e.created_ms, e.id), reverse=True)
    return found


async def read_page(
    conn: asyncpg.Connection,
    account_id: str,
    outbox: list[TransactionEntry],
    limit: int,
    before: str | None,
) -> HistoryPage:
    """The page, inside the caller's (repeatable read) transaction."""
    pool_id = members.pool_of(account_id)
    cursor: tuple[datetime, str] | None = None
    if before is not None:
        waiting = next((e for e in outbox if e.id == before), None)
        if waiting is not None:
            cursor = (_ms_to_dt(waiting.created_ms), waiting.id)
        else:
            if pool_id is None:
                at = await conn.fetchval(CURSOR_SQL, before, account_id)
            else:
                at = await conn.fetchval(MEMBER_CURSOR_SQL, before, account_id, pool_id)
            if at is None:
                raise ValidationError(
                    "before does not name a transaction of this account", field="before"
                )
            cursor = (at, before)
    present = set()
    if outbox:
        present = {r["id"] for r in await conn.fetch(PRESENT_SQL, [e.id for e in outbox])}
    rows = await _page_rows(conn, account_id, pool_id, limit + 1, cursor)
    merged = [_from_row(r) for r in rows]
    merged += [_from_entry(e) for e in outbox if e.id not in present]
    if cursor is not None:
        merged = [t for t in merged if (t.created_at, t.id) < cursor]
    merged.sort(key=lambda t: (t.created_at, t.id), reverse=True)
    page = merged[:limit]
    more = len(merged) > limit
    return HistoryPage(page, page[-1].id if more else None)


async def _page_rows(
    conn: asyncpg.Connection,
    account_id: str,
    pool_id: str | None,
    count: int,
    cursor: tuple[datetime, str] | None,
) -> list[asyncpg.Record]:
    if pool_id is None:
        if cursor is None:
            return list(await conn.fetch(PAGE_SQL, account_id, count))
        return list(await conn.fetch(PAGE_BEFORE_SQL, account_id, count, *cursor))
    if cursor is None:
        return list(await conn.fetch(MEMBER_PAGE_SQL, account_id, count, pool_id))
    return list(await conn.fetch(MEMBER_PAGE_BEFORE_SQL, account_id, count, pool_id, *cursor))
