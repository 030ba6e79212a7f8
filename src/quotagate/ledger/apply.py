"""Copy outbox entries into PostgreSQL: the statements the flush and the write-through share.

Inside one transaction (the caller's):

1. account events: upsert tier, status and overdraft (and a member's limit and
   own-credits-first) on ``user_credits``; an event from an
   older outbox position never overwrites a newer one (``last_event_position``), so a
   write-through that ran ahead of the flush, or a flush that re-reads entries after a crash,
   cannot bring back old settings;
2. transactions: inserted once each, and in the same transaction the balance changes of the
   rows actually inserted added to the snapshots. A transaction that is already in the ledger
   (written through, or flushed by a worker that died before it could delete the entries)
   changes nothing the second time;
3. explicit grants: the rows actually inserted that create, draw on, expire or void a grant
   change ``credit_grants`` (``quotagate.ledger.grants``), after the snapshots.

Two ways to do step 2:

- :func:`apply_entries` (typed entries; the write-through, and the flush's checked path):
  ``INSERT ... ON CONFLICT (id) DO NOTHING RETURNING id``, and the snapshots take the
  changes of the returned ids. Small batches bind one array per column (``unnest``, one
  round trip); large ones are COPYed (binary) into a temporary table first.
- :func:`apply_rows` (the flush's batches, ``quotagate.ledger.batch``): the transactions a
  write-through may have put in the ledger (all but spends) are looked up and left out; the
  rest go by one plain COPY (built from the stream reply) straight into
  ``credit_transactions``, and their effects, summed per account while the batch was built,
  are added to the snapshots by one upsert. A row in the ledger all the same (another flush,
  a write-through committed in between, a batch re-read after a crash) makes the COPY fail
  on the primary key, and the whole transaction with it: the caller then applies the batch
  with :func:`apply_entries`. COPY writes rows in bulk; ON CONFLICT checks every row against
  the index first, and the temporary table and the join back to the inserted ids add to that
  (docs/ledger.md compares the two).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from quotagate.ledger.batch import COPY_COLUMNS, COPY_OPTIONS, FlushBatch, grant_draws_json
from quotagate.ledger.grants import apply_grant_effects
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
    ("refund_of", "text"),
    ("grant_id", "text"),
    ("grant_draws", "text"),
    ("member_id", "text"),
)

_UNNEST_SOURCE = "unnest({}) AS b({})".format(
    ", ".join(f"${i + 1}::{kind}[]" for i, (_, kind) in enumerate(_STAGE_COLUMNS)),
    ", ".join(name for name, _ in _STAGE_COLUMNS),
)

STAGE_TABLE = "qg_flush_stage"

_INSERT_TRANSACTIONS = f"""
    INSERT INTO credit_transactions AS t
        (id, account_id, amount, type, resource, units, description, metadata,
         idempotency_key, balance_after, created_at, refund_of, grant_id, grant_draws,
         member_id)
    SELECT id, account_id, amount, type, resource, units, description, metadata::jsonb,
           idempotency_key, balance_after, {_ts("created_ms")}, refund_of, grant_id,
           grant_draws::jsonb, member_id
    FROM batch"""

_EFFECT_COLUMNS = """account_id,
           sum(amount)::bigint AS credits,
           sum(monthly_delta)::bigint AS monthly,
           max(id) AS last_id,
           min(created_ms) AS first_ms,
           max(created_ms) FILTER (WHERE resets) AS reset_ms"""

_SNAPSHOTS = f"""snapshots AS (
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
)"""

_TRANSACTIONS_SQL = f"""
WITH batch AS (
    SELECT * FROM {{source}}
),
inserted AS ({_INSERT_TRANSACTIONS}
    ON CONFLICT (id) DO NOTHING
    RETURNING t.id
),
effect AS (
    SELECT {_EFFECT_COLUMNS}
    FROM batch JOIN inserted USING (id)
    GROUP BY account_id
),
{_SNAPSHOTS}
SELECT (SELECT count(*) FROM inserted) AS inserted, (SELECT count(*) FROM snapshots) AS accounts,
       (SELECT array_agg(id) FROM batch JOIN inserted USING (id)
        WHERE grant_id IS NOT NULL OR grant_draws IS NOT NULL) AS grant_rows
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

SNAPSHOT_EFFECTS_SQL = f"""
INSERT INTO user_credits AS u
    (account_id, tier, status, credits, monthly_credits, overdraft_limit,
     last_reset_at, last_transaction_id, created_at, updated_at)
SELECT e.account_id, $7, 'active', e.credits, e.monthly, 0,
       {_ts("e.reset_ms")}, e.last_id, {_ts("e.first_ms")}, now()
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[])
     AS e(account_id, credits, monthly, last_id, first_ms, reset_ms)
ORDER BY e.account_id
ON CONFLICT (account_id) DO UPDATE SET
    credits = u.credits + excluded.credits,
    monthly_credits = u.monthly_credits + excluded.monthly_credits,
    last_transaction_id = greatest(u.last_transaction_id, excluded.last_transaction_id),
    last_reset_at = greatest(u.last_reset_at, excluded.last_reset_at),
    updated_at = now()
"""
"""The snapshots' side of :func:`apply_rows`: effects summed per account in Python, the same
upsert as in the statements above."""

PRESENT_SQL = "SELECT id FROM credit_transactions WHERE id = ANY($1::text[])"

EVENTS_SQL = f"""
INSERT INTO user_credits AS u
    (account_id, tier, status, overdraft_limit, last_reset_at, created_at,
     last_event_position, renewed_period, member_limit, own_credits_first, credits,
     monthly_credits, updated_at)
SELECT e.account_id, e.tier, e.status, e.overdraft_limit, {_ts("e.reset_ms")},
       {_ts("e.created_ms")}, e.position, e.renewed_period, e.member_limit,
       e.own_credits_first, 0, 0, now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
            $7::text[], $8::text[], $9::bigint[], $10::boolean[])
     AS e(account_id, tier, status, overdraft_limit, reset_ms, created_ms, position,
          renewed_period, member_limit, own_credits_first)
ORDER BY e.account_id
ON CONFLICT (account_id) DO UPDATE SET
    tier = excluded.tier,
    status = excluded.status,
    overdraft_limit = excluded.overdraft_limit,
    member_limit = excluded.member_limit,
    own_credits_first = excluded.own_credits_first,
    created_at = excluded.created_at,
    last_reset_at = greatest(u.last_reset_at, excluded.last_reset_at),
    last_event_position = excluded.last_event_position,
    renewed_period = greatest(u.renewed_period, excluded.renewed_period),
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
    quarantined: int = 0
    """Entries put in ``ledger_quarantine`` (``quotagate.ledger.quarantine``)."""

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
            events[entry.account_id] = entry.after(events.get(entry.account_id))  # stream order
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
        [r.refund_of for r in rows],
        [r.grant_id for r in rows],
        [grant_draws_json(r) for r in rows],
        [r.member_id for r in rows],
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
    await apply_events(conn, events)
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
        if row["grant_rows"]:
            grant_rows = set(row["grant_rows"])
            await apply_grant_effects(conn, [t for t in transactions if t.id in grant_rows])
    return Applied(len(transactions), inserted, len(events))


async def apply_events(conn: asyncpg.Connection, events: Sequence[AccountEvent]) -> None:
    """Upsert the accounts' settings, unless the ledger holds a newer event of the account."""
    if not events:
        return
    await conn.execute(
        EVENTS_SQL,
        [e.account_id for e in events],
        [e.tier for e in events],
        [e.status for e in events],
        [e.overdraft_limit for e in events],
        [e.last_reset_ms for e in events],
        [e.created_ms for e in events],
        [e.position for e in events],
        [e.renewed_period for e in events],
        [e.member_limit for e in events],
        [e.own_credits_first for e in events],
    )


async def apply_rows(conn: asyncpg.Connection, batch: FlushBatch, *, default_tier: str) -> Applied:
    """Apply a flush batch inside the caller's open transaction.

    Raises asyncpg.UniqueViolationError when a transaction of the batch is in the ledger
    although the lookup did not find it, and asyncpg.DataError (or another integrity error)
    when PostgreSQL refuses a value: the caller rolls back and uses :func:`apply_entries`.
    Every row COPY wrote is new, so every row's effect goes to the snapshots.
    """
    await apply_events(conn, batch.events)
    skip: set[int] = set()
    if batch.maybe_present:
        ids = [txn_id.decode() for txn_id, _, _ in batch.maybe_present.values()]
        present = {r["id"].encode() for r in await conn.fetch(PRESENT_SQL, ids)}
        skip = {i for i, (txn_id, _, _) in batch.maybe_present.items() if txn_id in present}
    data, count = batch.copy_data(skip)
    if count:
        await conn.copy_to_table(
            "credit_transactions", source=memoryview(data), columns=COPY_COLUMNS, **COPY_OPTIONS
        )
        effects = batch.snapshot_effects(skip)
        accounts = sorted(effects)
        await conn.execute(
            SNAPSHOT_EFFECTS_SQL,
            [a.decode() for a in accounts],
            [effects[a].credits for a in accounts],
            [effects[a].monthly for a in accounts],
            [effects[a].last_id.decode() for a in accounts],
            [effects[a].first_ms for a in accounts],
            [effects[a].reset_ms for a in accounts],
            default_tier,
        )
        await apply_grant_effects(conn, batch.grant_changes(skip))
    return Applied(batch.transactions, count, len(batch.events))


async def record_flush(
    conn: asyncpg.Connection, partition: int, last_stream_id: str, inserted: int
) -> None:
    """Note in the same transaction how far this partition's flush got."""
    await conn.execute(FLUSH_STATE_SQL, partition, last_stream_id, inserted)
