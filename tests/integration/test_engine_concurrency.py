"""Atomicity under concurrency, against a real Redis: exact outcomes, counted."""

from __future__ import annotations

import asyncio
from typing import cast

import redis.asyncio as aioredis
from tests.conftest import EngineFactory
from tests.engine.configs import PLAIN

from quotagate.engine import CreditEngine
from quotagate.errors import InsufficientCredits, RateLimited
from quotagate.ledger.outbox import RawEntries


async def _outbox_spends(engine: CreditEngine, account_id: str) -> list[int]:
    stream = engine.keys.outbox(engine.keys.partition_of(account_id))
    entries = cast(RawEntries, await engine.redis.xrange(stream))
    return [int(f["amt"]) for _, f in entries if f["a"] == account_id and f["t"] == "spend"]


async def test_10000_consumes_from_200_tasks_charge_exactly_the_balance(
    make_engine: EngineFactory, redis_url: str
) -> None:
    # Four engines (four connection pools, one unbatched) so calls really interleave in Redis.
    engines = [await make_engine(PLAIN) for _ in range(3)] + [
        await make_engine(PLAIN, batching=False)
    ]
    first = engines[0]
    await first.upsert_account("hot")
    await first.credit("hot", 5000)
    account_key = first.keys.account("hot").account

    lowest_seen: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        lowest = 5000
        while not done.is_set():
            m, b = await client.hmget(account_key, "m", "b")
            assert m is not None and b is not None
            lowest = min(lowest, int(m) + int(b))
            await asyncio.sleep(0)
        lowest_seen.append(lowest)
        await client.aclose()

    async def worker(n: int) -> tuple[int, int]:
        engine = engines[n % len(engines)]
        ok = refused = 0
        for _ in range(50):
            try:
                result = await engine.consume("hot", "unit")
                assert result.remaining >= 0
                ok += 1
            except InsufficientCredits:
                refused += 1
        return ok, refused

    watcher = asyncio.create_task(watch())
    outcomes = await asyncio.gather(*(worker(n) for n in range(200)))
    done.set()
    await watcher

    assert sum(ok for ok, _ in outcomes) == 5000
    assert sum(refused for _, refused in outcomes) == 5000
    assert (await first.get_account("hot")).balance == 0
    assert lowest_seen and lowest_seen[0] >= 0
    spends = await _outbox_spends(first, "hot")
    assert len(spends) == 5000
    assert sum(spends) == -5000


async def test_holds_and_consumes_racing_never_overdraw_available(
    make_engine: EngineFactory,
) -> None:
    engines = [await make_engine(PLAIN) for _ in range(2)] + [
        await make_engine(PLAIN, batching=False)
    ]
    engine = engines[0]
    for round_no in range(20):
        account = f"race-{round_no}"
        await engine.upsert_account(account)
        await engine.credit(account, 10)

        async def hold(i: int, account: str = account) -> int:
            try:
                await engines[i % 3].hold(account, amount=3)
                return 3
            except InsufficientCredits:
                return 0

        async def consume(i: int, account: str = account) -> int:
            try:
                await engines[i % 3].consume(account, "unit", 2)
                return 2
            except InsufficientCredits:
                return 0

        taken = await asyncio.gather(*(f(i) for i in range(12) for f in (hold, consume)))
        state = await engine.get_account(account)
        assert sum(taken) <= 10
        assert state.available >= 0
        assert state.reserved + (10 - state.balance) == sum(taken)


async def test_rate_limited_tier_admits_exactly_its_burst(make_engine: EngineFactory) -> None:
    engines = [await make_engine(PLAIN) for _ in range(2)]
    await engines[0].upsert_account("flood", tier="limited")
    await engines[0].credit("flood", 1000)

    async def attempt(i: int) -> int | None:
        try:
            await engines[i % 2].consume("flood", "unit")
            return None
        except RateLimited as exc:
            return exc.retry_after_ms

    results = await asyncio.gather(*(attempt(i) for i in range(200)))
    admitted = [r for r in results if r is None]
    refused = [r for r in results if r is not None]
    assert len(admitted) == 40
    assert len(refused) == 160
    assert all(0 < ms <= 100_000 for ms in refused)
    state = await engines[0].get_account("flood")
    assert state.balance == 1000 - 40  # refused requests charged nothing
    assert len(await _outbox_spends(engines[0], "flood")) == 40
