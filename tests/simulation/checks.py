"""The checks: the model against Redis after every step, and the books at checkpoints.

After a step, for every account it touched (read through the engine, from the same Redis the
gateways use): balance, monthly credits, reserved credits, the open holds one by one, status,
and that the account is not below its floor.

At a checkpoint, once ``quotagate flush`` has emptied every outbox, for every account: the sum
of its ledger rows = its snapshot in ``user_credits`` = its Redis balance = the model's. Every
acknowledged transaction is in the ledger exactly once (unless the model knows a FLUSHALL took
it); every spend, refund and earning in the ledger was acknowledged (a charge applied twice
would show up as one that was not); every grant in the ledger was acknowledged or is a monthly
grant; reserved = the sum of open holds. ``quotagate reconcile`` must find no drift.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
from tests.simulation.world import World

from quotagate.errors import AccountNotFound

UNACKNOWLEDGED_GRANT_PREFIX = "monthly grant ("
"""Grants nobody's answer names: an account's opening grant and the renewals."""


async def check_accounts(world: World, account_ids: list[str]) -> None:
    for account_id in account_ids:
        await check_account(world, account_id)


async def check_account(world: World, account_id: str) -> None:
    expected = world.model.accounts[account_id]
    try:
        actual = await world.engine.get_account(account_id)
    except AccountNotFound:
        world.expect(False, f"{account_id} is gone from Redis")
        return
    holds = {h.hold_id: h.amount for h in actual.holds}
    pairs = {
        "balance": (actual.balance, expected.balance),
        "monthly credits": (actual.monthly_credits, expected.monthly),
        "reserved": (actual.reserved, expected.reserved),
        "open holds": (holds, expected.holds),
        "status": (actual.status, expected.status),
    }
    off = {what: pair for what, pair in pairs.items() if pair[0] != pair[1]}
    world.expect(not off, f"{account_id}: Redis has, model expects: {off}")
    world.expect(actual.reserved == sum(holds.values()), f"{account_id}: reserved != its holds")
    world.expect(
        actual.balance >= -actual.overdraft_limit and actual.available >= 0,
        f"{account_id} is below its floor: {actual}",
    )


async def checkpoint(world: World) -> None:
    """Drain the outboxes, then balance the books three ways against the model."""
    await asyncio.to_thread(world.cluster.cli, "flush")
    await check_accounts(world, list(world.model.accounts))
    conn = await asyncpg.connect(world.cluster.database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, account_id, amount, type, description FROM credit_transactions"
        )
        snapshots = {
            r["account_id"]: r["credits"]
            for r in await conn.fetch("SELECT account_id, credits FROM user_credits")
        }
    finally:
        await conn.close()
    check_ledger_sums(world, rows, snapshots)
    check_ledger_ids(world, rows)
    report = await asyncio.to_thread(world.cluster.cli, "reconcile", "--json")
    world.note(f"checkpoint: {len(rows)} ledger rows, books balance ({len(report)} bytes report)")


def check_ledger_sums(world: World, rows: list[asyncpg.Record], snapshots: dict[str, int]) -> None:
    sums: Counter[str] = Counter()
    for row in rows:
        sums[row["account_id"]] += row["amount"]
    for account_id, account in world.model.accounts.items():
        three = (sums[account_id], snapshots.get(account_id), account.balance)
        world.expect(
            len(set(three)) == 1,
            f"{account_id}: ledger sum {three[0]}, snapshot {three[1]}, model {three[2]}",
        )


def check_ledger_ids(world: World, rows: list[asyncpg.Record]) -> None:
    counts = Counter(r["id"] for r in rows)
    twice = [i for i, n in counts.items() if n > 1]
    world.expect(not twice, f"transactions in the ledger more than once: {twice[:5]}")
    acknowledged = set(world.model.acknowledged) - set(world.model.lost)
    missing = acknowledged - set(counts)
    world.expect(
        not missing, f"acknowledged transactions missing from the ledger: {sorted(missing)[:5]}"
    )
    unexpected = [
        (r["id"], r["account_id"], r["type"], r["amount"])
        for r in rows
        if r["id"] not in world.model.acknowledged
        and r["type"] not in ("expire", "adjust")
        and not (
            r["type"] == "grant"
            and (r["description"] or "").startswith(UNACKNOWLEDGED_GRANT_PREFIX)
        )
    ]
    world.expect(not unexpected, f"ledger rows no answer acknowledged: {unexpected[:5]}")
    adjusted = [r["id"] for r in rows if r["type"] == "adjust"]
    world.expect(not adjusted, f"adjust rows appeared (a repair ran?): {adjusted[:5]}")
