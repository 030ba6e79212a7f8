"""Reconciliation of a pool's members (check ``pool_usage``, docs/pools.md): what Redis holds
the pool paid for a member in the pool's period (``pu``) against the pool's spends naming it
since the pool's last reset, in the ledger and in the outbox. The ledger is written by
flushing entries in the scripts' format, Redis by recovery from it; later charges are written
as a script would (outbox entry, pool balance, member usage), drifts behind its back."""

from __future__ import annotations

import asyncio

import pytest
from tests.conftest import EngineFactory
from tests.jobs.test_pool_recover import CONFIG, redis_ms, renewed_pool
from tests.ledger.pool_entries import PoolOutbox

from quotagate.engine import CreditEngine
from quotagate.jobs.reconcile import CAUSES, Drift, reconcile_async
from quotagate.jobs.recover import recover_async
from quotagate.jobs.repair import repair_account
from quotagate.ledger import Ledger, flush_all

POOL = "acme"
ALICE, BOB = f"{POOL}~alice", f"{POOL}~bob"


@pytest.fixture
async def engine(make_engine: EngineFactory) -> CreditEngine:
    return await make_engine(CONFIG)


@pytest.fixture
async def out(engine: CreditEngine, own_ledger: Ledger) -> PoolOutbox:
    """The pool of ``renewed_pool`` in the ledger and, recovered from it, in Redis."""
    made = await renewed_pool(engine, POOL)
    await flush_all(engine, own_ledger)
    await recover_async(engine, own_ledger)
    return made


async def charge(engine: CreditEngine, out: PoolOutbox, member: str, credits: int) -> None:
    """The pool pays ``credits`` for ``member``, as the consume script books it."""
    await out.spend(POOL, credits, member=member)
    await engine.redis.hincrby(engine.keys.account(POOL).account, "b", -credits)
    await engine.redis.hincrby(engine.keys.account(member).account, "pu", credits)


def pool_usage_drifts(drifts: list[Drift]) -> dict[str, tuple[int | None, int | None]]:
    assert all(d.check == "pool_usage" for d in drifts), drifts
    assert all(d.cause == CAUSES["pool_usage"] for d in drifts)
    return {d.account_id: (d.expected, d.found) for d in drifts}


async def test_the_pools_usage_balances_in_the_ledger_and_the_outbox(
    engine: CreditEngine, own_ledger: Ledger, out: PoolOutbox
) -> None:
    assert (await reconcile_async(engine, own_ledger)).drifts == []
    await charge(engine, out, ALICE, 5)
    await charge(engine, out, BOB, 1)
    report = await reconcile_async(engine, own_ledger)  # both still in the outbox
    assert (report.accounts, report.drifts) == (3, [])
    await flush_all(engine, own_ledger)
    assert (await reconcile_async(engine, own_ledger)).drifts == []


async def test_a_usage_changed_behind_the_engines_back_is_named(
    engine: CreditEngine, own_ledger: Ledger, out: PoolOutbox
) -> None:
    await charge(engine, out, ALICE, 5)  # pending: 10 in the ledger, 5 in the outbox
    await engine.redis.hincrby(engine.keys.account(ALICE).account, "pu", 3)
    await engine.redis.hset(engine.keys.account(BOB).account, "pu", "0")
    report = await reconcile_async(engine, own_ledger)
    assert pool_usage_drifts(report.drifts) == {ALICE: (15, 18), BOB: (7, 0)}


async def test_a_usage_counted_in_an_earlier_period_is_not_compared(
    engine: CreditEngine, own_ledger: Ledger, out: PoolOutbox
) -> None:
    """The next charge starts it again from 0: what it says no longer limits anything."""
    await engine.redis.hset(engine.keys.account(BOB).account, mapping={"pu": 99, "pp": "2026-10"})
    assert (await reconcile_async(engine, own_ledger)).drifts == []


async def test_a_renewal_not_yet_in_the_ledger_starts_the_period(
    engine: CreditEngine, own_ledger: Ledger, out: PoolOutbox
) -> None:
    """The ledger's rows all come before a renewal still in the outbox: only the pending
    spends after it count, until the flush brings the renewal and its last reset over."""
    await asyncio.sleep(0.005)
    await out.event(POOL, reset_ms=str(await redis_ms(engine)), rp="2026-12")
    await engine.redis.hset(engine.keys.account(POOL).account, "rp", "2026-12")
    await asyncio.sleep(0.005)
    for member in (ALICE, BOB):  # their next charges start the period from 0
        await engine.redis.hset(
            engine.keys.account(member).account, mapping={"pu": 0, "pp": "2026-12"}
        )
    await charge(engine, out, ALICE, 2)
    assert (await reconcile_async(engine, own_ledger)).drifts == []
    await flush_all(engine, own_ledger)
    assert (await reconcile_async(engine, own_ledger)).drifts == []
    await engine.redis.hincrby(engine.keys.account(ALICE).account, "pu", 10)
    report = await reconcile_async(engine, own_ledger)
    assert pool_usage_drifts(report.drifts) == {ALICE: (2, 12)}


async def test_repair_sets_a_drifted_usage_unless_a_charge_moved_it_since(
    engine: CreditEngine, own_ledger: Ledger, out: PoolOutbox
) -> None:
    await engine.redis.hincrby(engine.keys.account(ALICE).account, "pu", 3)
    await engine.redis.hincrby(engine.keys.account(BOB).account, "pu", 4)
    report = await reconcile_async(engine, own_ledger)
    drifts = {d.account_id: d for d in report.drifts}
    assert pool_usage_drifts(report.drifts) == {ALICE: (10, 13), BOB: (7, 11)}
    await charge(engine, out, BOB, 1)  # Bob's usage moved after the report read it
    alice = await repair_account(engine, own_ledger, ALICE, [drifts[ALICE]])
    bob = await repair_account(engine, own_ledger, BOB, [drifts[BOB]])
    assert (alice.action, alice.pool_usage, alice.amount) == ("usage", 10, 0)
    assert (bob.action, bob.pool_usage) == ("none", None)  # left for the next reconcile
    after = await reconcile_async(engine, own_ledger)
    assert pool_usage_drifts(after.drifts) == {BOB: (8, 12)}
    again = await repair_account(engine, own_ledger, BOB, after.drifts)
    assert again.pool_usage == 8
    assert (await reconcile_async(engine, own_ledger)).drifts == []
    membership = (await engine.get_account(ALICE)).membership
    assert membership is not None and membership.used == 10
