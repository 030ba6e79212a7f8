"""Idempotency inside the scripts: a replay returns the first answer and charges once."""

from __future__ import annotations

import pytest
from tests.conftest import EngineFactory
from tests.engine.configs import PLAIN
from tests.support.servers import RedisProcess

from quotagate.engine import CreditEngine
from quotagate.errors import IdempotencyConflict


async def _check_replays(engine: CreditEngine, flush_scripts: bool) -> None:
    await engine.upsert_account("acct")
    await engine.credit("acct", 100)

    first = await engine.consume("acct", "unit", 3, idempotency_key="req-1", metadata={"k": 1})
    grant = await engine.credit("acct", 7, "earn", idempotency_key="grant-1")
    hold = await engine.hold("acct", amount=10, idempotency_key="hold-1")
    if flush_scripts:
        await engine.redis.script_flush()

    again = await engine.consume("acct", "unit", 3, idempotency_key="req-1", metadata={"k": 1})
    assert again.transaction_id == first.transaction_id
    assert (again.cost, again.remaining, again.replayed) == (3, first.remaining, True)
    grant_again = await engine.credit("acct", 7, "earn", idempotency_key="grant-1")
    assert (grant_again.transaction_id, grant_again.replayed) == (grant.transaction_id, True)
    hold_again = await engine.hold("acct", amount=10, idempotency_key="hold-1")
    assert (hold_again.hold_id, hold_again.replayed) == (hold.hold_id, True)

    state = await engine.get_account("acct")
    assert state.balance == 100 - 3 + 7
    assert state.reserved == 10
    stream = engine.keys.outbox(engine.keys.partition_of("acct"))
    ids = [f["id"] for _, f in await engine.redis.xrange(stream) if f["t"] != "account"]
    assert ids.count(first.transaction_id) == 1
    assert ids.count(grant.transaction_id) == 1

    if flush_scripts:
        await engine.redis.script_flush()
    for conflicting in (
        engine.consume("acct", "unit", 4, idempotency_key="req-1", metadata={"k": 1}),
        engine.consume("acct", "unit", 3, idempotency_key="req-1", metadata={"k": 2}),
        engine.credit("acct", 8, "earn", idempotency_key="grant-1"),
        engine.hold("acct", amount=11, idempotency_key="hold-1"),
    ):
        with pytest.raises(IdempotencyConflict):
            await conflicting
    assert (await engine.get_account("acct")).balance == 104


async def test_replay_returns_first_answer_and_charges_once(make_engine: EngineFactory) -> None:
    await _check_replays(await make_engine(PLAIN), flush_scripts=False)


@pytest.mark.parametrize("batching", [True, False])
async def test_replay_and_conflict_survive_script_flush(
    make_engine: EngineFactory, private_redis: RedisProcess, batching: bool
) -> None:
    engine = await make_engine(PLAIN, url=private_redis.url, batching=batching)
    await _check_replays(engine, flush_scripts=True)


async def test_keys_are_scoped_per_account(make_engine: EngineFactory) -> None:
    engine = await make_engine(PLAIN)
    for account in ("a", "b"):
        await engine.upsert_account(account)
        await engine.credit(account, 10)
    first = await engine.consume("a", "unit", idempotency_key="same")
    other = await engine.consume("b", "unit", idempotency_key="same")
    assert first.transaction_id != other.transaction_id
    assert not other.replayed


async def test_refusals_are_not_remembered(make_engine: EngineFactory) -> None:
    engine = await make_engine(PLAIN)
    await engine.upsert_account("acct")
    from quotagate.errors import InsufficientCredits

    with pytest.raises(InsufficientCredits):
        await engine.consume("acct", "unit", 5, idempotency_key="retry-me")
    await engine.credit("acct", 5)
    result = await engine.consume("acct", "unit", 5, idempotency_key="retry-me")
    assert not result.replayed and result.remaining == 0


async def test_idempotency_records_expire(make_engine: EngineFactory) -> None:
    engine = await make_engine(
        PLAIN.replace(
            "opening_grant = false", "opening_grant = false\n[idempotency]\nttl_seconds = 60"
        )
    )
    await engine.upsert_account("acct")
    await engine.credit("acct", 5)
    await engine.consume("acct", "unit", idempotency_key="k")
    ttl = await engine.redis.pttl(engine.keys.account("acct", "k").idempotency)
    assert 55_000 < ttl <= 60_000
