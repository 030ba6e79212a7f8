"""Copy outbox entries into PostgreSQL: the one function the flush and the write-through share.

Inside one transaction (the caller's):

1. account events: upsert tier, status and overdraft on ``user_credits``; an event from an
   older outbox position never overwrites a newer one (``last_event_position``), so a
   write-through that ran ahead of the flush, or a flush that re-reads entries after a crash,
   cannot bring back old settings;
2. transactions: ``INSERT ... ON CONFLICT (id) DO NOTHING RETURNING id`` and, in the same
   statement, the balance changes of the rows actually inserted added to the snapshots.
   A transaction that is already in the ledger (written through, or flushed by a worker that
   died before it could delete the entries) changes nothing the second time.

The batch reaches the server by COPY (binary) into a temporary table, which the statement
then reads. Binding one array per column to the statement through ``unnest`` saves two round
trips but encodes slower; ``python -m quotagate.ledger.bench`` measures both on the same
batches (see the README). Small batches (a write-through's one or two rows) go by ``unnest``:
there the round trips are the cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from quotagate.ledger.outbox import AccountEvent, Entry, TransactionEntry

Staging = Literal["unnest", "copy"]
"""How a batch reaches the server. copy: COPY into a temporary table, then the statement reads
it (three round trips). unnest: arrays bound to the statement (one round trip)."""

COPY_MIN_ROWS = 100
"""Batches of at least this many transactions are staged by COPY, smaller ones by unnest."""

_MS = "(timestamptz 'epoch' + {} * interval '1 millisecond')"


def _ts(column: str) -> str:
    return _MS.format(column)


_STAGE_COLUMNS = (
    ("id", "text"),
    ("account_id", "text"),
    ("amount", "bigint"),
    ("type", "text"),
    ("resource", "text"),
    ("units", "bigint"),
    ("description", "text"),
    ("metadata", "text"),
    ("idempotency_key", "text"),
    ("balance_after", "bigint"),
    ("created_ms", "bigint"),
    ("monthly_delta", "bigint"),
    ("resets", "boolean"),
)

_UNNEST_SOURCE = "unnest({}) AS b({})".format(
    ", ".join(f"${i + 1}::{kind}[]" for i, (_, kind) in enumerate(_STAGE_COLUMNS)),
    ", ".join(name for name, _ in _STAGE_COLUMNS),
)

STAGE_TABLE = "qg_flush_stage"

_TRANSACTIONS_SQL = f"""
WITH batch AS (
    SELECT * FROM {{source}}
),
inserted AS (
    INSERT INTO credit_transactions AS t
        (id, account_id, amount, type, resource, units, description, metadata,
         idempotency_key, balance_after, created_at)
    SELECT id, account_id, amount, type, resource, units, description, metadata::jsonb,
           idempotency_key, balance_after, {_ts("created_ms")}
    FROM batch
    ON CONFLICT (id) DO NOTHING
    RETURNING t.id
),
effect AS (
    SELECT b.account_id,
           sum(b.amount)::bigint AS credits,
           sum(b.monthly_delta)::bigint AS monthly,
           max(b.id) AS last_id,
           min(b.created_ms) AS first_ms,
           max(b.created_ms) FILTER (WHERE b.resets) AS reset_ms
    FROM batch b JOIN inserted i ON i.id = b.id
    GROUP BY b.account_id
),
snapshots AS (
    INSERT INTO user_credits AS u
        (account_id, tier, status, credits, monthly_credits, overdraft_limit,
         last_reset_at, last_transaction_id, created_at, updated_at)
    SELECT account_id, ${{tier}}, 'active', credits, monthly, 0,
           {_ts("reset_ms")}, last_id, {_ts("first_ms")}, now()
    FROM effect
    ORDER BY account_id
    ON CONFLICT (account_id) DO UPDATE SET
        credits = u.credits + excluded.credits,
        monthly_credits = u.monthly_credits + excluded.monthly_credits,
        last_transaction_id = greatest(u.last_transaction_id, excluded.last_transaction_id),
        last_reset_at = greatest(u.last_reset_at, excluded.last_reset_at),
        updated_at = now()
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted) AS inserted, (SELECT count(*) FROM snapshots) AS accounts
"""
# A transaction whose account has no row yet (its account event not in the ledger) creates
# one with the default tier and no event position: the account event, when it comes, sets
# the real settings.

UNNEST_TRANSACTIONS_SQL = _TRANSACTIONS_SQL.format(
    source=_UNNEST_SOURCE, tier=len(_STAGE_COLUMNS) + 1
)
COPY_TRANSACTIONS_SQL = _TRANSACTIONS_SQL.format(source=STAGE_TABLE, tier=1)
CREATE_STAGE_SQL = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGE_TABLE} ("
    + ", ".join(f"{name} {kind}" for name, kind in _STAGE_COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)

EVENTS_SQL = f"""
INSERT INTO user_credits AS u
    (account_id, tier, status, overdraft_limit, last_reset_at, created_at,
     last_event_position, credits, monthly_credits, updated_at)
SELECT e.account_id, e.tier, e.status, e.overdraft_limit, {_ts("e.reset_ms")},
       {_ts("e.created_ms")}, e.position, 0, 0, now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
            $7::text[]) AS e(account_id, tier, status, overdraft_limit, reset_ms, created_ms,
                             position)
ORDER BY e.account_id
ON CONFLICT (account_id) DO UPDATE SET
    tier = excluded.tier,
    status = excluded.status,
    overdraft_limit = excluded.overdraft_limit,
    created_at = excluded.created_at,
    last_reset_at = greatest(u.last_reset_at, excluded.last_reset_at),
    last_event_position = excluded.last_event_position,
    updated_at = now()
WHERE u.last_event_position IS NULL OR u.last_event_position < excluded.last_event_position
"""

FLUSH_STATE_SQL = """
INSERT INTO outbox_flushes AS f (partition, last_stream_id, flushed_at, transactions)
VALUES ($1, $2, now(), $3)
ON CONFLICT (partition) DO UPDATE SET
    last_stream_id = excluded.last_stream_id,
    flushed_at = excluded.flushed_at,
    transactions = f.transactions + excluded.transactions
"""


@dataclass(frozen=True, slots=True)
class Applied:
    """What one batch did to the ledger."""

    transactions: int
    """Transactions in the batch."""
    inserted: int
    """Of those, rows inserted now (the others were in the ledger already)."""
    events: int
    """Account events in the batch (applied unless a newer one is in the ledger)."""

    @property
    def duplicates(self) -> int:
        return self.transactions - self.inserted


def split(entries: Sequence[Entry]) -> tuple[list[TransactionEntry], list[AccountEvent]]:
    """Transactions (first copy of each id) and the newest account event of each account."""
    seen: set[str] = set()
    transactions: list[TransactionEntry] = []
    events: dict[str, AccountEvent] = {}
    for entry in entries:
        if isinstance(entry, AccountEvent):
            events[entry.account_id] = entry  # stream order: a later one replaces
        elif entry.id not in seen:
            seen.add(entry.id)
            transactions.append(entry)
    return transactions, list(events.values())


def transaction_columns(rows: Sequence[TransactionEntry]) -> list[list[Any]]:
    return [
        [r.id for r in rows],
        [r.account_id for r in rows],
        [r.amount for r in rows],
        [r.type for r in rows],
        [r.resource for r in rows],
        [r.units for r in rows],
        [r.description for r in rows],
        [r.metadata for r in rows],
        [r.idempotency_key for r in rows],
        [r.balance_after for r in rows],
        [r.created_ms for r in rows],
        [r.monthly_delta for r in rows],
        [r.resets_monthly for r in rows],
    ]


def transaction_records(rows: Sequence[TransactionEntry]) -> list[tuple[Any, ...]]:
    return list(zip(*transaction_columns(rows), strict=True))


async def apply_entries(
    conn: asyncpg.Connection,
    entries: Sequence[Entry],
    *,
    default_tier: str,
    staging: Staging | None = None,
) -> Applied:
    """Apply a batch inside the caller's open transaction (``staging``: None chooses)."""
    transactions, events = split(entries)
    if staging is None:
        staging = "copy" if len(transactions) >= COPY_MIN_ROWS else "unnest"
    if events:
        await conn.execute(
            EVENTS_SQL,
            [e.account_id for e in events],
            [e.tier for e in events],
            [e.status for e in events],
            [e.overdraft_limit for e in events],
            [e.last_reset_ms for e in events],
            [e.created_ms for e in events],
            [e.position for e in events],
        )
    inserted = 0
    if transactions:
        if staging == "copy":
            await conn.execute(CREATE_STAGE_SQL)
            await conn.copy_records_to_table(STAGE_TABLE, records=transaction_records(transactions))
            row = await conn.fetchrow(COPY_TRANSACTIONS_SQL, default_tier)
        else:
            row = await conn.fetchrow(
                UNNEST_TRANSACTIONS_SQL, *transaction_columns(transactions), default_tier
            )
        assert row is not None
        inserted = int(row["inserted"])
    return Applied(len(transactions), inserted, len(events))


async def record_flush(
    conn: asyncpg.Connection, partition: int, last_stream_id: str, inserted: int
) -> None:
    """Note in the same transaction how far this partition's flush got."""
    await conn.execute(FLUSH_STATE_SQL, partition, last_stream_id, inserted)
