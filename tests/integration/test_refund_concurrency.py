"""Concurrent refunds of one spend, from several gateways at once, never return more than it
charged: the first ones race to start the count from the ledger, the rest meet it in Redis."""

from __future__ import annotations

import asyncio
import random

from tests.conftest import EngineFactory
from tests.ledger.support import config_text

from quotagate.engine import CreditEngine
from quotagate.errors import RefundExceedsSpend
from quotagate.ledger import Ledger, flush_all
from quotagate.ledger.refunds import refund

GATEWAYS = 4
"""Engines of their own (a connection and a batcher each), as separate gateway processes."""


async def _engines(make_engine: EngineFactory) -> list[CreditEngine]:
    return [await make_engine(config_text(8)) for _ in range(GATEWAYS)]


async def _spend(engine: CreditEngine, ledger: Ledger, account_id: str, cost: int) -> str:
    made = await engine.upsert_account(account_id, tier="pro")
    await ledger.write_through(engine, account_id, list(made.outbox_entry_ids))
    spend = (await engine.consume(account_id, "api_call", cost)).transaction_id
    await flush_all(engine, ledger)  # the spend is in the ledger only: each first refund reads it
    return spend


async def _refunded_in_ledger(ledger: Ledger, spend: str) -> int:
    async with ledger.pool.acquire() as conn:
        total = await conn.fetchval(
            "SELECT coalesce(sum(amount), 0) FROM credit_transactions WHERE refund_of = $1", spend
        )
    return int(total)


async def _attempt(
    engine: CreditEngine, ledger: Ledger, account_id: str, amount: int, spend: str
) -> int:
    """The amount refunded (0 when refused because the spend's refunds would pass its cost)."""
    try:
        done = await refund(engine, ledger, account_id, amount, spend)
    except RefundExceedsSpend:
        return 0
    assert await ledger.write_through(engine, account_id, [done.outbox_entry_id])
    return amount


async def test_100_concurrent_refunds_of_one_credit_return_exactly_the_cost(
    make_engine: EngineFactory, ledger: Ledger, key_prefix: str
) -> None:
    engines = await _engines(make_engine)
    a, cost = f"{key_prefix}-hundred", 37
    spend = await _spend(engines[0], ledger, a, cost)
    results = await asyncio.gather(
        *(_attempt(engines[i % GATEWAYS], ledger, a, 1, spend) for i in range(100))
    )
    assert (results.count(1), results.count(0)) == (cost, 100 - cost)
    assert (await engines[0].get_account(a)).balance == 1000
    await flush_all(engines[0], ledger)
    assert await _refunded_in_ledger(ledger, spend) == cost


async def test_concurrent_refunds_of_mixed_amounts_never_pass_the_cost(
    make_engine: EngineFactory, ledger: Ledger, key_prefix: str
) -> None:
    engines = await _engines(make_engine)
    rng = random.Random(7)
    a, cost = f"{key_prefix}-mixed", 50
    spend = await _spend(engines[0], ledger, a, cost)
    amounts = [rng.randint(1, 4) for _ in range(100)]
    results = await asyncio.gather(
        *(_attempt(engines[i % GATEWAYS], ledger, a, n, spend) for i, n in enumerate(amounts))
    )
    refunded = sum(results)
    # What was refused would have passed the cost; so with amounts of at most 4 the refunds
    # stop within 4 of it, and what is left cannot take the smallest refused amount.
    refused = [n for n, got in zip(amounts, results, strict=True) if got == 0]
    assert cost - 4 < refunded <= cost
    assert all(n > cost - refunded for n in refused)
    count = await engines[0].redis.hgetall(engines[0].keys.refund_count(a, spend))
    assert count == {"cost": str(cost), "refunded": str(refunded)}
    assert (await engines[0].get_account(a)).balance == 1000 - cost + refunded
    await flush_all(engines[0], ledger)
    assert await _refunded_in_ledger(ledger, spend) == refunded
