"""The ledger under load, with real RQ worker processes (``quotagate worker``).

A private Redis per test (RQ's keys and FLUSHALL stay off the shared server); the session's
PostgreSQL database, with account ids of the test's own.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rq.job import Job
from tests.jobs.processes import quotagate_command
from tests.ledger.support import (
    LedgerStack,
    assert_books_balance,
    ledger_rows,
    scheduler,
)
from tests.support.servers import redis_process

from quotagate.engine import CreditEngine
from quotagate.errors import InsufficientCredits
from quotagate.jobs.flush import flush_partition
from quotagate.ledger import Ledger


@pytest.fixture
async def stack(ledger_url: str, tmp_path: Path) -> AsyncIterator[LedgerStack]:
    with redis_process() as server:
        s = LedgerStack(server.url, ledger_url, tmp_path, partitions=16, prefix="lw")
        await s.engine.initialize()
        try:
            yield s
        finally:
            await s.close()


async def _one_operation(engine: CreditEngine, rng: random.Random, a: str) -> list[str]:
    """One of the mixed operations; the transaction ids it wrote (none when refused)."""
    roll = rng.random()
    try:
        if roll < 0.55:
            return [(await engine.consume(a, "api_call", rng.randint(1, 9))).transaction_id]
        if roll < 0.65:
            return [(await engine.credit(a, rng.randint(1, 50), "grant")).transaction_id]
        if roll < 0.75:
            return [(await engine.credit(a, rng.randint(1, 20), "adjust")).transaction_id]
        if roll < 0.80:
            return [(await engine.credit(a, rng.randint(1, 20), "earn")).transaction_id]
        hold = await engine.hold(a, amount=rng.randint(5, 40))
        capture = await engine.capture(a, hold.hold_id, rng.randint(1, 5))
        return [capture.transaction_id]
    except InsufficientCredits:
        return []


async def test_20000_mixed_operations_over_500_accounts_reach_the_ledger_once(
    stack: LedgerStack, ledger: Ledger
) -> None:
    run = uuid.uuid4().hex[:8]
    accounts = [f"mix-{run}-{i}" for i in range(500)]
    for i in range(0, 500, 100):
        await asyncio.gather(*(stack.engine.upsert_account(a) for a in accounts[i : i + 100]))
    stack.start_worker("mix-a")
    stack.start_worker("mix-b")
    stop = asyncio.Event()
    cron = asyncio.create_task(scheduler(stack, stop))

    rng = random.Random(20_000)
    written: list[str] = []
    for _ in range(40):  # 40 rounds of 500 operations, one per account, all at once
        rounds = await asyncio.gather(*(_one_operation(stack.engine, rng, a) for a in accounts))
        written += [t for ids in rounds for t in ids]
    stop.set()
    await cron
    assert len(written) > 15_000  # most operations were accepted

    done = await asyncio.to_thread(
        subprocess.run, [*quotagate_command(), "flush", "--json"],
        env={**os.environ, **stack.env()}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deleted"] >= 0
    assert await stack.waiting() == 0

    rows = await ledger_rows(ledger, accounts)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(written) + len(accounts)  # + opening grants
    assert set(written) <= set(ids)
    await assert_books_balance(stack.engine, ledger, accounts)
    assert all(w.alive() for w in stack.workers)


async def test_two_workers_flushing_the_same_partitions_at_once(
    stack: LedgerStack, ledger: Ledger
) -> None:
    run = uuid.uuid4().hex[:8]
    accounts = [f"two-{run}-{i}" for i in range(100)]
    await asyncio.gather(*(stack.engine.upsert_account(a, tier="pro") for a in accounts))
    first, second = stack.start_worker("two-a"), stack.start_worker("two-b")

    jobs: list[Job] = []

    async def flood(stop: asyncio.Event) -> None:
        # Every partition's flush twice per tick, past the queued flag: both workers are
        # always after the same partitions.
        while not stop.is_set():
            for p in range(stack.engine.config.partitions):
                jobs.append(stack.queue.enqueue(flush_partition, p, result_ttl=600))
                jobs.append(stack.queue.enqueue(flush_partition, p, result_ttl=600))
            await asyncio.sleep(0.1)

    stop = asyncio.Event()
    flooding = asyncio.create_task(flood(stop))
    written: list[str] = []
    for _ in range(100):
        results = await asyncio.gather(*(stack.engine.consume(a, "api_call", 3) for a in accounts))
        written += [r.transaction_id for r in results]
        await asyncio.sleep(0.01)
    stop.set()
    await flooding
    await stack.drain()

    rows = await ledger_rows(ledger, accounts)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(written) + len(accounts)
    await assert_books_balance(stack.engine, ledger, accounts)
    for _ in range(300):  # the flood's leftovers: at most 30 s
        if not stack.queue.count:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    outcomes = [job.return_value() for job in jobs]
    statuses = Counter(o["status"] for o in outcomes if o)
    # Both workers flushed, and the lease sent one away while the other held a partition.
    assert statuses["flushed"] > 0 and statuses["busy"] > 0, statuses
    assert sum(o["inserted"] for o in outcomes if o and o["status"] == "flushed") > 0
    for worker in (first, second):
        assert "flush_partition" in worker.output()
