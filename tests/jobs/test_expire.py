"""The hold expiry sweep gives the credits of expired holds back on accounts nobody touches."""

from __future__ import annotations

import asyncio

from tests.conftest import EngineFactory
from tests.jobs.configs import HOLDS

from quotagate.engine import CreditEngine
from quotagate.jobs.expire import expire_all_async

CONFIG = HOLDS


async def _reserved(engine: CreditEngine, account_id: str) -> int:
    """The reserved credits as stored (reads that filter expired holds would hide a leak)."""
    return int(await engine.redis.hget(engine.keys.account(account_id).account, "r") or 0)


async def test_sweep_releases_only_what_is_due_on_every_partition(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(CONFIG)
    ids = [f"h-{i:02d}" for i in range(20)]
    for a in ids:
        await engine.upsert_account(a)
        await engine.credit(a, 100)
        await engine.hold(a, amount=30, ttl_seconds=1)
        await engine.hold(a, amount=5, ttl_seconds=3600)
    assert {engine.keys.partition_of(a) for a in ids} == {0, 1, 2, 3}

    early = await expire_all_async(engine)
    assert (early.holds, early.credits) == (0, 0)
    await asyncio.sleep(1.1)
    swept = await expire_all_async(engine)
    assert (swept.holds, swept.credits) == (20, 600)
    for a in ids:
        assert await _reserved(engine, a) == 5
        assert (await engine.get_account(a)).available == 95
    again = await expire_all_async(engine)
    assert (again.holds, again.credits) == (0, 0)
    # The long holds remain indexed for a later sweep; nothing else is.
    indexed = [await engine.redis.zcard(engine.keys.partition_hold_expiry(p)) for p in range(4)]
    assert sum(indexed) == 20
