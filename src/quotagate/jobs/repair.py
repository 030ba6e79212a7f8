"""Repairs: make an account's books balance with an ``adjust`` row, never silently.

The Redis balance is taken as the truth for the total: it is what the account holder saw
and spent against, and every change the engine made to it is in the ledger or the outbox.
A repair writes one ``adjust`` transaction into ``credit_transactions`` for whatever the
ledger rows lack to explain it, and sets the snapshot to what the rows then sum to (both
buckets as Redis holds them, less the pending entries). An account Redis lost is restored
from the ledger instead (recovery for one account): no money moves.

Exact under traffic: the transaction locks the account's snapshot row first. A flush
updates that row in the same transaction as it inserts the rows, so no flush of this
account can commit while the repair reads Redis (balances and outbox in one MULTI) and the
ledger; entries a flush inserted but has not committed count as pending, as they should.

A member whose ``pool_usage`` drifted gets ``pu`` set to what the ledger and the outbox count
(no money moves: it is what its limit is measured against), in a script that writes only if
no charge of the member counted since the drift was read and the pool did not renew.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import cast

import asyncpg

from quotagate import ids
from quotagate.engine import CreditEngine
from quotagate.engine.grants import stored_balance
from quotagate.jobs.pg import postgres_errors
from quotagate.jobs.reconcile import Drift
from quotagate.jobs.recover import SNAPSHOT_COLUMNS, live_grants, member_state_of, restore_row
from quotagate.ledger import Ledger
from quotagate.ledger.history import PRESENT_SQL
from quotagate.ledger.outbox import RawEntries, TransactionEntry, parse_entries
from quotagate.ledger.pool_usage import member_periods


@dataclass(frozen=True)
class Repair:
    account_id: str
    action: str
    """ "adjust": an adjust row was written (and the snapshot set to what the rows sum to);
    "snapshot": the rows already explained Redis, only the snapshot was set to their sum;
    "restored": Redis got the account back from the ledger; "usage": only a member's use of
    its pool in the period was set; "none": nothing was off (or was left: see pool_usage)."""
    transaction_id: str | None
    amount: int
    snapshot_before: int | None
    snapshot_after: int | None
    pool_usage: int | None = None
    """What ``pu`` was set to for a ``pool_usage`` drift; None: not set (no such drift, or a
    charge or the pool's renewal moved it since the drift was read: reconcile again)."""


@dataclass(frozen=True)
class _RedisSide:
    state: dict[str, str]
    pending: list[TransactionEntry]


async def _read_redis(engine: CreditEngine, account_id: str) -> _RedisSide:
    keys = engine.keys.account(account_id)
    async with engine.redis.pipeline(transaction=True) as pipe:
        pipe.hgetall(keys.account)
        pipe.xrange(keys.outbox, "-", "+")
        state, raw = await pipe.execute()
    entries = [
        e
        for e in parse_entries(cast(RawEntries, raw))
        if isinstance(e, TransactionEntry) and e.account_id == account_id
    ]
    return _RedisSide(cast(dict[str, str], state), entries)


async def repair_account(
    engine: CreditEngine, ledger: Ledger, account_id: str, drifts: Sequence[Drift] = ()
) -> Repair:
    """Balance one account's books (see the module docstring for which side wins).

    ``drifts`` (what reconciliation found) go into the adjust row's description and metadata.
    """
    with postgres_errors():
        return await _repair(engine, ledger.pool, account_id, drifts)


async def _repair(
    engine: CreditEngine, pool: asyncpg.Pool, account_id: str, drifts: Sequence[Drift]
) -> Repair:
    async with pool.acquire() as conn:
        restored = False
        if not await engine.redis.exists(engine.keys.account(account_id).account):
            restored = await _restore(engine, conn, account_id)
        async with conn.transaction():
            repair = await _adjust(engine, conn, account_id, drifts)
    if restored and repair.action == "none":
        repair = replace(repair, action="restored")
    usage = await _set_pool_usage(engine, account_id, drifts)
    if usage is not None:
        repair = replace(repair, pool_usage=usage)
        if repair.action == "none":
            repair = replace(repair, action="usage")
    return repair


async def _set_pool_usage(
    engine: CreditEngine, account_id: str, drifts: Sequence[Drift]
) -> int | None:
    """Set a member's ``pu`` to what its ``pool_usage`` drift expected, if nothing moved it."""
    for d in drifts:
        if d.check != "pool_usage" or d.expected is None or d.found is None:
            continue
        if await engine.set_pool_usage(account_id, d.found, d.expected):
            return d.expected
    return None


async def _restore(engine: CreditEngine, conn: asyncpg.Connection, account_id: str) -> bool:
    """Give Redis back an account it lost, from its snapshot row (no money moves); a member
    with its settings and what its pool paid for it in the pool's period."""
    row = await conn.fetchrow(
        f"SELECT {SNAPSHOT_COLUMNS} FROM user_credits WHERE account_id = $1", account_id
    )
    if row is None:
        return False
    grants = await live_grants(conn, [account_id])
    state = member_state_of(row, await member_periods(conn, [account_id]), {})
    return await restore_row(engine, row, grants=grants.get(account_id, ()), member_state=state)


async def _adjust(
    engine: CreditEngine, conn: asyncpg.Connection, account_id: str, drifts: Sequence[Drift]
) -> Repair:
    await _ensure_snapshot_row(engine, conn, account_id)
    snap = await conn.fetchrow(
        "SELECT credits, monthly_credits FROM user_credits WHERE account_id = $1 FOR UPDATE",
        account_id,
    )
    side = await _read_redis(engine, account_id)
    if snap is None or not side.state:  # on neither side, or lost by Redis with no row
        before = int(snap["credits"]) if snap else None
        return Repair(account_id, "none", None, 0, before, before)
    flushed = {r["id"] for r in await conn.fetch(PRESENT_SQL, [e.id for e in side.pending])}
    pending = [e for e in side.pending if e.id not in flushed]
    m = int(side.state["m"])
    b = stored_balance(0, side.state["b"], side.state.get("g"))  # purchased and explicit grants
    target = m + b - sum(e.amount for e in pending)
    target_monthly = m - sum(e.monthly_delta for e in pending)
    rows = int(
        await conn.fetchval(
            "SELECT COALESCE(SUM(amount), 0)::bigint FROM credit_transactions"
            " WHERE account_id = $1",
            account_id,
        )
    )
    amount = target - rows
    txn = None
    if amount:
        txn = ids.new_id()
        checks = ", ".join(sorted({d.check for d in drifts})) or "manual"
        detail = {
            "repair": {
                "checks": checks,
                "found": [d.to_dict() for d in drifts],
                "redis_balance": m + b,
                "pending": m + b - target,
                "snapshot": int(snap["credits"]),
                "ledger_rows": rows,
            }
        }
        await conn.execute(
            "INSERT INTO credit_transactions (id, account_id, amount, type, description,"
            " metadata, balance_after, created_at)"
            " VALUES ($1, $2, $3, 'adjust', $4, $5::jsonb, $6, $7)",
            txn, account_id, amount, f"reconciliation repair ({checks} check)",
            json.dumps(detail), target, datetime.now(UTC),
        )  # fmt: skip
    await conn.execute(
        "UPDATE user_credits SET credits = $2, monthly_credits = $3, updated_at = now(),"
        " last_transaction_id = GREATEST(last_transaction_id, $4) WHERE account_id = $1",
        account_id, target, target_monthly, txn,
    )  # fmt: skip
    before = int(snap["credits"])
    action = "adjust" if txn else "snapshot" if before != target else "none"
    return Repair(account_id, action, txn, amount, before, target)


async def _ensure_snapshot_row(
    engine: CreditEngine, conn: asyncpg.Connection, account_id: str
) -> None:
    """A snapshot row for an account Redis has and the ledger does not (settings from Redis)."""
    key = engine.keys.account(account_id).account
    state = cast(dict[str, str], await engine.redis.hgetall(key))
    if not state:
        return
    created = datetime.fromtimestamp(int(state["ca"]) / 1000, UTC)
    reset = datetime.fromtimestamp(int(state["rst"]) / 1000, UTC) if state.get("rst") else None
    await conn.execute(
        "INSERT INTO user_credits (account_id, tier, status, credits, monthly_credits,"
        " overdraft_limit, last_reset_at, created_at, updated_at)"
        " VALUES ($1, $2, $3, 0, 0, $4, $5, $6, now()) ON CONFLICT (account_id) DO NOTHING",
        account_id, state["tier"], state["st"], int(state["od"]), reset, created,
    )  # fmt: skip
