"""Faults lose nothing: a worker killed mid-batch, PostgreSQL gone during traffic, Redis
emptied after a durable grant. Real ``quotagate worker`` processes, a private Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.ledger.support import (
    LedgerStack,
    assert_books_balance,
    ledger_rows,
    postgres_process,
    scheduler,
    wait_for,
)
from tests.support.servers import redis_process

from quotagate.engine.keys import flush_failures
from quotagate.ledger import Ledger, upgrade
from quotagate.ledger.faults import PAUSE_ENV
from quotagate.ledger.outbox import TransactionEntry, read_batch

BATCH = 500


@pytest.fixture
async def stack(ledger_url: str, tmp_path: Path) -> AsyncIterator[LedgerStack]:
    with redis_process() as server:
        s = LedgerStack(server.url, ledger_url, tmp_path, partitions=2, prefix="lf")
        await s.engine.initialize()
        try:
            yield s
        finally:
            await s.close()


async def _spend(stack: LedgerStack, accounts: list[str], rounds: int) -> list[str]:
    written = []
    for _ in range(rounds):
        results = await asyncio.gather(*(stack.engine.consume(a, "api_call", 1) for a in accounts))
        written += [r.transaction_id for r in results]
    return written


@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
async def test_a_worker_killed_mid_batch_leaves_no_row_missing_and_none_twice(
    stack: LedgerStack, ledger: Ledger, point: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    accounts = [f"kill-{run}-{i}" for i in range(40)]
    await asyncio.gather(*(stack.engine.upsert_account(a, tier="pro") for a in accounts))
    written = await _spend(stack, accounts, 40)  # 1,600 spends, two partitions
    waiting = await stack.waiting()
    first_batches = set()  # transactions in the first batch of each partition
    for p in range(2):
        head = await read_batch(stack.engine, p, BATCH)
        first_batches.add(sum(isinstance(e, TransactionEntry) for e in head))
    marker = tmp_path / "paused"
    doomed = stack.start_worker("doomed", **{PAUSE_ENV: f"{point}:{marker}"})
    await stack.schedule()
    await asyncio.to_thread(wait_for, marker.exists, 30, f"the flush to reach {point}")

    committed = len(await ledger_rows(ledger, accounts))
    if point == "before_commit":
        assert committed == 0  # inserted, but not visible: not committed
    else:
        assert committed in first_batches
    doomed.kill()  # SIGKILL, in the middle of the batch
    assert await stack.waiting() == waiting  # nothing was deleted
    assert len(await ledger_rows(ledger, accounts)) == committed

    stack.start_worker("survivor")
    await stack.drain()  # the dead worker's lease runs out (2 s), then the batch is redone
    rows = await ledger_rows(ledger, accounts)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(written) + len(accounts)
    await assert_books_balance(stack.engine, ledger, accounts)


async def test_postgres_down_during_5000_consumes_loses_nothing(
    stack: LedgerStack, tmp_path: Path
) -> None:
    with postgres_process() as pg:
        await asyncio.to_thread(upgrade, pg.url)
        stack.database_url = pg.url
        accounts = [f"pgdown-{i}" for i in range(100)]
        await asyncio.gather(*(stack.engine.upsert_account(a, tier="pro") for a in accounts))
        worker = stack.start_worker("outage")
        await stack.drain()  # the worker is connected and flushing
        ledger = await Ledger.connect(pg.url)
        try:
            stop = asyncio.Event()
            cron = asyncio.create_task(scheduler(stack, stop))
            pg.stop(immediate=True)

            written = await _spend(stack, accounts, 50)
            assert len(written) == len(set(written)) == 5000  # every consume accepted
            grant = await stack.engine.credit(accounts[0], 500, "grant")
            assert not await ledger.write_through(
                stack.engine, accounts[0], [grant.outbox_entry_id]
            )
            await asyncio.sleep(1.5)  # flush jobs run, fail, back off
            assert await stack.waiting() == 5001
            failing = [p for p in range(2) if stack.conn.get(flush_failures(stack.prefix, p))]
            assert failing, "no flush failed while PostgreSQL was down"
            assert worker.alive()

            await asyncio.to_thread(pg.start)
            await stack.drain(within_seconds=60)
            stop.set()
            await cron
            rows = await ledger_rows(ledger, accounts)
            ids = [r["id"] for r in rows]
            assert len(ids) == len(set(ids)) == 5000 + 1 + len(accounts)
            assert set(written) | {grant.transaction_id} <= set(ids)
            await assert_books_balance(stack.engine, ledger, accounts)
            assert all(stack.conn.get(flush_failures(stack.prefix, p)) is None for p in failing)
        finally:
            await ledger.aclose()
            worker.stop()


async def test_a_durable_grant_survives_flushall_of_redis(
    stack: LedgerStack, ledger: Ledger
) -> None:
    a = f"flushall-{uuid.uuid4().hex[:8]}"
    opened = await stack.engine.upsert_account(a, tier="pro")
    assert await ledger.write_through(stack.engine, a, list(opened.outbox_entry_ids))
    grant = await stack.engine.credit(a, 777, "grant", description="paid invoice 42")
    assert await ledger.write_through(stack.engine, a, [grant.outbox_entry_id])  # "durable": true

    await stack.engine.redis.flushall()  # the private Redis loses everything
    assert await stack.engine.redis.dbsize() == 0

    rows = {r["id"]: r for r in await ledger_rows(ledger, [a])}
    assert rows[grant.transaction_id]["amount"] == 777
    assert rows[grant.transaction_id]["description"] == "paid invoice 42"
    snap = (await ledger.snapshots([a]))[a]
    assert (snap.credits, snap.tier, snap.status) == (1777, "pro", "active")
