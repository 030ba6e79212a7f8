"""The batcher: alone a call goes at once; under load calls share pipelines; a caller that
gave up while its call waited is not charged."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import EngineFactory
from tests.engine.batchers import batcher_of
from tests.engine.configs import PLAIN
from tests.support.servers import redis_process

from quotagate.engine.batching import MAX_BATCH


async def test_calls_made_while_a_batch_is_out_go_together(make_engine: EngineFactory) -> None:
    engine = await make_engine(PLAIN)
    await engine.upsert_account("acct")
    await engine.credit("acct", 10_000)
    sizes: list[int] = []
    runner = batcher_of(engine, "acct")
    send = runner._send

    def counted(pipe: Any, batch: list[Any]) -> None:
        sizes.append(len(batch))
        send(pipe, batch)

    runner._send = counted  # type: ignore[method-assign]  # counts, then sends as before
    await engine.consume("acct", "unit")
    assert sizes == [1]  # alone: sent at once, by itself

    sizes.clear()

    async def steady(n: int) -> None:
        for _ in range(n):
            await engine.consume("acct", "unit")

    await asyncio.gather(*(steady(20) for _ in range(50)))
    assert sum(sizes) == 1000
    assert len(sizes) < 200  # 1000 calls from 50 callers share pipelines
    assert max(sizes) <= MAX_BATCH
    assert (await engine.get_account("acct")).balance == 10_000 - 1001


async def test_a_caller_that_gave_up_while_waiting_is_not_charged(
    make_engine: EngineFactory,
) -> None:
    with redis_process() as server:
        engine = await make_engine(PLAIN, url=server.url)
        await engine.upsert_account("acct")
        await engine.credit("acct", 100)
        admin = engine.redis
        # redis-py leaves execute_command unannotated.
        await admin.execute_command("CLIENT", "PAUSE", "400", "WRITE")  # type: ignore[no-untyped-call]
        first = asyncio.create_task(engine.consume("acct", "unit"))  # held by the pause
        await asyncio.sleep(0.1)
        waiting = asyncio.create_task(engine.consume("acct", "unit"))  # queued behind it
        await asyncio.sleep(0.05)
        waiting.cancel()
        result = await first
        assert waiting.cancelled()
        assert result.remaining == 99
        assert (await engine.get_account("acct")).balance == 99
