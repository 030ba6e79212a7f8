"""Edges of grant expiry that the property test (tests/property) does not reach: a refusal
after a lazy expiry (and the ledger's refund, which meets one), an expiry past 2038, answers
that read the balance without expiring.

Each expiry must be written once and counted nowhere after its instant.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from tests.conftest import EngineFactory

from quotagate.engine import CreditEngine
from quotagate.engine.results import RefundCount
from quotagate.errors import InsufficientCredits, RefundExceedsSpend, RefundNotCounted
from quotagate.ledger import Ledger, flush_all
from quotagate.ledger.outbox import RawEntries
from quotagate.ledger.refunds import refund

CONFIG = """
opening_grant = false
[resources]
unit = 1
[tiers.free]
credit_limit = 1000
monthly_grant = 100
"""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def _expire_rows(engine: CreditEngine, account: str) -> list[dict[str, str]]:
    stream = engine.keys.outbox(engine.keys.partition_of(account))
    entries = cast(RawEntries, await engine.redis.xrange(stream))
    return [f for _, f in entries if f["a"] == account and f["t"] == "expire"]


async def _account_with_grant_past_expiry(engine: CreditEngine) -> str:
    """An account holding one grant of 10 whose expiry passed, not yet written."""
    await engine.upsert_account("acct")
    soon = datetime.now(UTC) + timedelta(milliseconds=40)
    grant = await engine.grant("acct", 10, expires_at=soon)
    await asyncio.sleep(0.1)
    return grant.grant_id


async def test_a_refund_refused_as_not_counted_writes_nothing_and_the_expiry_comes_once(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(CONFIG)
    grant_id = await _account_with_grant_past_expiry(engine)
    with pytest.raises(RefundNotCounted):
        await engine.credit("acct", 5, "refund", refund_of=str(uuid.uuid4()))
    assert await _expire_rows(engine, "acct") == []  # refused before anything was written
    assert await engine.expire_grants("acct") == (1, 10)
    assert await engine.expire_grants("acct") == (0, 0)  # nothing left to expire
    assert [row["gr"] for row in await _expire_rows(engine, "acct")] == [grant_id]


async def test_a_refund_refused_as_exceeding_its_spend_keeps_the_expiry_it_wrote(
    make_engine: EngineFactory,
) -> None:
    """A refusal with the count in hand is an answer: grants past their expiry go first, as in
    every other script, and the expiry is written once."""
    engine = await make_engine(CONFIG)
    await engine.upsert_account("acct")
    await engine.credit("acct", 5)
    spend = await engine.consume("acct", "unit", 3)
    grant_id = await _account_with_grant_past_expiry(engine)
    with pytest.raises(RefundExceedsSpend):
        await engine.credit(
            "acct", 4, "refund", refund_of=spend.transaction_id, counted=RefundCount(3, 0)
        )
    assert [row["gr"] for row in await _expire_rows(engine, "acct")] == [grant_id]
    assert await engine.expire_grants("acct") == (0, 0)
    assert (await engine.get_account("acct")).balance == 2


async def test_a_consume_refused_keeps_the_expiry_it_wrote(make_engine: EngineFactory) -> None:
    """The same refusal after an expiry in consume.lua: the expiry is written once."""
    engine = await make_engine(CONFIG)
    grant_id = await _account_with_grant_past_expiry(engine)
    with pytest.raises(InsufficientCredits):
        await engine.consume("acct", "unit", 5)
    assert await engine.expire_grants("acct") == (0, 0)
    assert [row["gr"] for row in await _expire_rows(engine, "acct")] == [grant_id]


async def test_a_grant_expires_at_the_millisecond_it_names(make_engine: EngineFactory) -> None:
    engine = await make_engine(CONFIG)
    await engine.upsert_account("acct")
    expires_at = EPOCH + timedelta(milliseconds=2_197_815_942_279)  # 2039-08-24 16:25:42.279
    await engine.grant("acct", 7, expires_at=expires_at)
    state = await engine.get_account("acct")
    assert [g.expires_at for g in state.grants] == [expires_at]


async def test_an_upsert_answers_the_balance_without_expired_grants(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(CONFIG)
    await _account_with_grant_past_expiry(engine)
    answered = await engine.upsert_account("acct", status="active")
    assert answered.balance == (await engine.get_account("acct")).balance == 0


async def test_a_renewal_already_done_answers_the_balance_without_expired_grants(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(CONFIG)
    await _account_with_grant_past_expiry(engine)
    period = (await engine.get_account("acct")).renewed_period
    answered = await engine.renew("acct", period)
    assert answered.reason == "already_renewed"
    assert answered.balance == (await engine.get_account("acct")).balance == 0


async def test_a_first_refund_after_an_expiry_leaves_the_ledger_equal_to_redis(
    make_engine: EngineFactory, ledger: Ledger, key_prefix: str
) -> None:
    engine, account = await make_engine(CONFIG), f"{key_prefix}-refund"
    await engine.upsert_account(account)
    await engine.credit(account, 20)
    spend = (await engine.consume(account, "unit", 5)).transaction_id
    await flush_all(engine, ledger)  # Redis has no count of its refunds: the ledger counts
    soon = datetime.now(UTC) + timedelta(milliseconds=40)
    await engine.grant(account, 10, expires_at=soon)
    await asyncio.sleep(0.1)
    await refund(engine, ledger, account, 2, spend)
    await flush_all(engine, ledger)
    async with ledger.pool.acquire() as conn:
        total = await conn.fetchval(
            "SELECT sum(amount) FROM credit_transactions WHERE account_id = $1", account
        )
    assert (await engine.get_account(account)).balance == total == 17
