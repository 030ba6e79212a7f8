"""Monthly renewal through RQ: 10,000 accounts, three tiers, both policies, real worker
processes, one of them SIGKILLed in the middle of a partition. Each account is renewed
exactly once, banned ones get nothing, and the books balance afterwards."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import cast

import pytest
from redis import Redis
from rq import Queue
from tests.conftest import EngineFactory
from tests.jobs.population import RENEWAL_CONFIG, expected_after_renewal, plan, populate
from tests.jobs.processes import QuotagateProcess, quotagate_env
from tests.support.servers import RedisProcess

from quotagate.engine import CreditEngine
from quotagate.jobs import queues
from quotagate.jobs.enqueue import enqueue_renewals
from quotagate.jobs.reconcile import reconcile_async
from quotagate.jobs.renew import partitions_to_renew
from quotagate.ledger import Ledger, flush_all
from quotagate.ledger.outbox import RawEntries
from quotagate.settings import Settings

PERIOD = "2099-02"
ACCOUNTS = 10_000
PARTITIONS = 4
"""Few partitions, so each holds 2,500 accounts and a kill lands inside one."""

CONFIG = RENEWAL_CONFIG.replace("partitions = 8", f"partitions = {PARTITIONS}")


@pytest.fixture
async def engine(private_redis: RedisProcess, make_engine: EngineFactory) -> CreditEngine:
    return await make_engine(CONFIG, url=private_redis.url)


async def _renewal_entries(engine: CreditEngine) -> Counter[tuple[str, str]]:
    seen: Counter[tuple[str, str]] = Counter()
    for p in range(PARTITIONS):
        start = "-"
        while True:
            page = cast(
                RawEntries,
                await engine.redis.xrange(engine.keys.outbox(p), start, "+", count=5000),
            )
            for _, f in page:
                if f["t"] in ("grant", "expire") and PERIOD in f["d"]:
                    seen[(f["a"], f["t"])] += 1
            if len(page) < 5000:
                break
            start = "(" + page[-1][0]
    return seen


async def _stamped(engine: CreditEngine, partition: int) -> Counter[bool]:
    """How many accounts of the partition carry this period's stamp (and how many not)."""
    out: Counter[bool] = Counter()
    async for key in engine.redis.scan_iter(match=engine.keys.account_pattern(partition)):
        out[await engine.redis.hget(key, "rp") == PERIOD] += 1
    return out


async def test_renewal_killed_half_way_and_run_again_renews_each_account_once(
    engine: CreditEngine,
    private_redis: RedisProcess,
    own_ledger: Ledger,
    own_ledger_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    planned = plan(ACCOUNTS)
    await populate(engine, planned)
    await flush_all(engine, own_ledger)
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    env = quotagate_env(private_redis.url, own_ledger_url, key_prefix, config)
    settings = Settings.from_env(env)

    job_ids = enqueue_renewals(list(range(PARTITIONS)), PERIOD, settings)
    assert len(job_ids) == PARTITIONS
    first = QuotagateProcess(["worker", "--name", "first"], env, tmp_path / "first.log")
    expected_entries = sum(
        1 + (p.tier == "enterprise") for p in planned if not p.banned
    )  # a grant each (free accounts at their cap excepted), plus an expiry on resets
    try:
        # Kill when some but not all of the renewals are written.
        deadline = asyncio.get_running_loop().time() + 120
        while True:
            done = sum([await engine.redis.xlen(engine.keys.outbox(p)) for p in range(PARTITIONS)])
            if done > 0.3 * expected_entries:
                break
            assert first.alive(), first.output()
            assert asyncio.get_running_loop().time() < deadline, first.output()
            await asyncio.sleep(0.01)
        first.kill()
    finally:
        first.kill()

    stamps = [await _stamped(engine, p) for p in range(PARTITIONS)]
    unfinished = await partitions_to_renew(engine, PERIOD)
    # The kill landed inside a partition: some of its accounts renewed, some not.
    assert any(s[True] and s[False] for s in stamps), stamps
    assert unfinished, "every partition was done before the kill"

    # The daily schedule's job finds the unfinished partitions and enqueues them again.
    queue = Queue(queues.jobs_queue_name(key_prefix), connection=Redis.from_url(private_redis.url))
    queue.enqueue("quotagate.jobs.renew.renew_all", PERIOD)
    second = QuotagateProcess(["worker", "--name", "second"], env, tmp_path / "second.log")
    try:
        deadline = asyncio.get_running_loop().time() + 120
        while await partitions_to_renew(engine, PERIOD) or queue.count:
            assert second.alive(), second.output()
            assert asyncio.get_running_loop().time() < deadline, second.output()
            await asyncio.sleep(0.1)
    finally:
        second.stop()
        queue.connection.close()

    entries = await _renewal_entries(engine)
    assert max(entries.values()) == 1  # nobody renewed twice
    banned = {p.account_id for p in planned if p.banned}
    assert not banned & {a for a, _ in entries}
    async with engine.redis.pipeline(transaction=False) as pipe:
        for p in planned:
            pipe.hmget(engine.keys.account(p.account_id).account, "m", "b", "rp")
        rows = await pipe.execute()
    for p, (m, b, rp) in zip(planned, rows, strict=True):
        tier = engine.config.tiers[p.tier]
        assert (int(m), int(b)) == expected_after_renewal(p, tier), p
        assert (rp == PERIOD) == (not p.banned), p

    await flush_all(engine, own_ledger)
    report = await reconcile_async(engine, own_ledger)
    assert (report.accounts, report.drifts) == (ACCOUNTS, [])
