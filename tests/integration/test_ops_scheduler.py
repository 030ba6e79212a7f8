"""`quotagate scheduler` with a `quotagate worker`, as operators run them: expired holds give
their credits back within one sweep interval, and the outboxes reach the ledger."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis import Redis
from rq.cron import CronScheduler
from tests.conftest import EngineFactory
from tests.jobs.configs import HOLDS
from tests.jobs.processes import QuotagateProcess, quotagate_env
from tests.support.servers import RedisProcess

from quotagate.engine import CreditEngine
from quotagate.jobs.reconcile import reconcile_async
from quotagate.jobs.schedule import EXPIRY_INTERVAL_SECONDS
from quotagate.ledger import Ledger, outbox_lag

CONFIG = HOLDS

SLACK_SECONDS = 2.0
"""A sweep is enqueued every interval; the worker picking it up and running it takes a bit."""


@pytest.fixture
async def engine(private_redis: RedisProcess, make_engine: EngineFactory) -> CreditEngine:
    return await make_engine(CONFIG, url=private_redis.url)


async def _reserved(engine: CreditEngine, ids: list[str]) -> int:
    async with engine.redis.pipeline(transaction=False) as pipe:
        for a in ids:
            pipe.hget(engine.keys.account(a).account, "r")
        return sum(int(r) for r in await pipe.execute())


async def test_scheduler_and_worker_expire_holds_within_one_interval_and_flush(
    engine: CreditEngine,
    own_ledger: Ledger,
    own_ledger_url: str,
    private_redis: RedisProcess,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    env = quotagate_env(private_redis.url, own_ledger_url, key_prefix, config)
    ids = [f"s-{i:02d}" for i in range(24)]
    for a in ids:
        await engine.upsert_account(a)
        await engine.credit(a, 50)
        await engine.consume(a, "unit", 3)

    worker = QuotagateProcess(["worker"], env, tmp_path / "worker.log")
    scheduler = QuotagateProcess(["scheduler"], env, tmp_path / "scheduler.log")
    try:
        # The flushes: every outbox reaches the ledger without anyone asking.
        deadline = time.monotonic() + 30
        while (await outbox_lag(engine)).total:
            assert worker.alive(), worker.output()
            assert scheduler.alive(), scheduler.output()
            assert time.monotonic() < deadline, worker.output() + scheduler.output()
            await asyncio.sleep(0.1)

        # Holds on accounts nobody touches afterwards.
        holds = [await engine.hold(a, amount=20, ttl_seconds=1) for a in ids]
        expires_at = max(h.expires_at for h in holds).timestamp()
        assert await _reserved(engine, ids) == 20 * len(ids)
        while await _reserved(engine, ids):
            late = time.time() - expires_at
            assert late < EXPIRY_INTERVAL_SECONDS + SLACK_SECONDS, worker.output()
            await asyncio.sleep(0.05)
        released_after = time.time() - expires_at
        assert released_after >= 0

        names = {
            job.name
            for s in CronScheduler.all(Redis.from_url(private_redis.url))
            for job in s.get_jobs()
        }
        assert names == {
            f"{key_prefix}:{n}"
            for n in ("flush", "expire-holds", "webhooks", "renewal", "reconciliation")
        }
    finally:
        assert scheduler.stop() == 0, scheduler.output()
        worker.stop()

    for a in ids:
        assert (await engine.get_account(a)).available == 47
    assert (await reconcile_async(engine, own_ledger)).drifts == []
