"""Monthly renewal over 10,000 accounts in three tiers and both policies, run in place."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import cast

from tests.conftest import EngineFactory
from tests.jobs.population import RENEWAL_CONFIG, expected_after_renewal, plan, populate

from quotagate.engine import CreditEngine
from quotagate.jobs.renew import (
    RenewTally,
    partitions_to_renew,
    renew_all_async,
    renew_partition_async,
)
from quotagate.ledger.outbox import RawEntries

PERIOD = "2099-01"


async def _buckets(engine: CreditEngine, ids: list[str]) -> dict[str, tuple[int, int]]:
    async with engine.redis.pipeline(transaction=False) as pipe:
        for a in ids:
            pipe.hmget(engine.keys.account(a).account, "m", "b")
        rows = await pipe.execute()
    return {a: (int(m), int(b)) for a, (m, b) in zip(ids, rows, strict=True)}


async def _renewal_entries(engine: CreditEngine) -> Counter[tuple[str, str]]:
    """(account, type) of every renewal transaction in the outboxes."""
    seen: Counter[tuple[str, str]] = Counter()
    for p in range(engine.config.partitions):
        for _, f in cast(RawEntries, await engine.redis.xrange(engine.keys.outbox(p))):
            if f["t"] in ("grant", "expire") and PERIOD in f.get("d", ""):
                seen[(f["a"], f["t"])] += 1
    return seen


async def test_10000_accounts_renewed_once_with_the_right_balances(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(RENEWAL_CONFIG)
    planned = plan(10_000)
    await populate(engine, planned)

    first = await renew_all_async(engine, PERIOD)
    banned = sum(p.banned for p in planned)
    assert first.accounts == 10_000
    assert (first.renewed, first.banned, first.already_renewed) == (10_000 - banned, banned, 0)

    ids = [p.account_id for p in planned]
    buckets = await _buckets(engine, ids)
    for p in planned:
        assert buckets[p.account_id] == expected_after_renewal(p, engine.config.tiers[p.tier]), p
    assert await partitions_to_renew(engine, PERIOD) == []

    entries = await _renewal_entries(engine)
    assert max(entries.values()) == 1
    assert not any(a for (a, _) in entries if int(a[-6:]) % 10 == 7)  # banned: nothing
    granted = sum(
        expected_after_renewal(p, engine.config.tiers[p.tier])[0]
        - (engine.config.tiers[p.tier].monthly_grant - p.spent)
        for p in planned
        if engine.config.tiers[p.tier].renewal == "add"
    )
    expired = sum(
        engine.config.tiers[p.tier].monthly_grant - p.spent
        for p in planned
        if p.tier == "enterprise" and not p.banned
    )
    assert first.expired == expired
    assert first.granted == granted + 5000 * sum(
        1 for p in planned if p.tier == "enterprise" and not p.banned
    )

    second = await renew_all_async(engine, PERIOD)
    assert (second.renewed, second.granted, second.expired) == (0, 0, 0)
    assert second.already_renewed == 10_000 - banned
    assert await _buckets(engine, ids) == buckets
    assert await _renewal_entries(engine) == entries


async def test_a_spend_racing_with_the_renewal_is_never_lost(make_engine: EngineFactory) -> None:
    engine = await make_engine(RENEWAL_CONFIG)
    planned = [p for p in plan(600) if not p.banned and p.tier == "enterprise"]
    await populate(engine, planned)
    spends = [engine.consume(p.account_id, "unit", 1) for p in planned for _ in range(3)]
    renewal = renew_all_async(engine, PERIOD)
    results = await asyncio.gather(renewal, *spends)
    tally = results[0]
    assert isinstance(tally, RenewTally) and tally.renewed == len(planned)
    # Reset policy: the monthly bucket is the grant minus whatever was spent after the renewal.
    buckets = await _buckets(engine, [p.account_id for p in planned])
    for p in planned:
        stream = engine.keys.outbox(engine.keys.partition_of(p.account_id))
        changes = [
            int(f["dm"])
            for _, f in cast(RawEntries, await engine.redis.xrange(stream))
            if f["a"] == p.account_id and "dm" in f
        ]
        assert sum(changes) == buckets[p.account_id][0], p


async def test_a_partition_pass_only_marks_its_own_partition(make_engine: EngineFactory) -> None:
    engine = await make_engine(RENEWAL_CONFIG)
    await populate(engine, plan(50))
    await renew_partition_async(engine, 3, PERIOD)
    assert 3 not in await partitions_to_renew(engine, PERIOD)
    assert len(await partitions_to_renew(engine, PERIOD)) == engine.config.partitions - 1


def test_the_renewal_job_named_for_rq_is_the_renewal_of_a_partition() -> None:
    from rq.utils import import_attribute

    from quotagate.jobs.enqueue import RENEW_PARTITION_JOB
    from quotagate.jobs.renew import renew_partition

    assert import_attribute(RENEW_PARTITION_JOB) is renew_partition
