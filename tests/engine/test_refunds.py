"""Refunds name their spend and return at most what it charged; adjustments keep available >= 0.

Against the real Redis and PostgreSQL: the count of a spend's refunds lives in Redis while the
spend is refunded, and is counted again from the outbox and the ledger when Redis has none
(the count expired, or Redis lost its data and recovery ran).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from tests.conftest import EngineFactory
from tests.ledger.support import config_text, ledger_rows
from tests.support.servers import RedisProcess, free_port

from quotagate import ids
from quotagate.config import parse_config
from quotagate.engine import CreditEngine, KeySpace
from quotagate.engine.keys import REFUND_COUNT_TTL_SECONDS
from quotagate.engine.results import RefundCount
from quotagate.errors import (
    AdjustBelowFloor,
    IdempotencyConflict,
    InsufficientCredits,
    LedgerUnavailable,
    RefundExceedsSpend,
    RefundNotCounted,
    SpendNotFound,
    ValidationError,
)
from quotagate.jobs.recover import recover_async
from quotagate.ledger import Ledger, flush_all
from quotagate.ledger.refunds import refund

Acct = Callable[[str], str]


@pytest.fixture
async def lengine(make_engine: EngineFactory) -> CreditEngine:
    return await make_engine(config_text(8))


@pytest.fixture
def acct(key_prefix: str) -> Acct:
    return lambda name: f"{key_prefix}-{name}"


async def _spend(engine: CreditEngine, ledger: Ledger, account_id: str, units: int) -> str:
    """A new account with a spend of ``units`` credits (opening grant 1000, pro)."""
    made = await engine.upsert_account(account_id, tier="pro")
    await ledger.write_through(engine, account_id, list(made.outbox_entry_ids))
    return (await engine.consume(account_id, "api_call", units)).transaction_id


async def _outbox_len(engine: CreditEngine, account_id: str) -> int:
    return int(await engine.redis.xlen(engine.keys.outbox(engine.keys.partition_of(account_id))))


async def test_refunds_of_one_spend_return_at_most_its_cost(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("cap")
    spend = await _spend(lengine, ledger, a, 7)
    assert (await refund(lengine, ledger, a, 4, spend)).balance == 997
    with pytest.raises(RefundExceedsSpend) as refused:
        await refund(lengine, ledger, a, 4, spend)
    assert refused.value.extra == {"cost": 7, "refunded": 4, "refundable": 3}
    assert (await refund(lengine, ledger, a, 3, spend)).balance == 1000
    with pytest.raises(RefundExceedsSpend):
        await refund(lengine, ledger, a, 1, spend)
    assert (await lengine.get_account(a)).balance == 1000
    # The count in Redis: cost and refunded, expiring a while after the last refund.
    key = lengine.keys.refund_count(a, spend)
    assert await lengine.redis.hgetall(key) == {"cost": "7", "refunded": "7"}
    ttl = await lengine.redis.ttl(key)
    assert REFUND_COUNT_TTL_SECONDS - 5 < ttl <= REFUND_COUNT_TTL_SECONDS


async def test_a_refund_reaches_the_ledger_with_the_spend_it_names(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("mapped")
    spend = await _spend(lengine, ledger, a, 9)
    written = await refund(lengine, ledger, a, 2, spend, description="late delivery")
    # Written through now (a refund is money in), and the flush copies the same row once.
    assert await ledger.write_through(lengine, a, [written.outbox_entry_id])
    flushed = await refund(lengine, ledger, a, 3, spend)
    await flush_all(lengine, ledger)
    rows = {r["id"]: r for r in await ledger_rows(ledger, [a])}
    assert [(rows[t]["type"], rows[t]["amount"], rows[t]["refund_of"]) for t in (
        written.transaction_id, flushed.transaction_id, spend)] == [
        ("refund", 2, spend), ("refund", 3, spend), ("spend", -9, None)]  # fmt: skip


async def test_without_a_count_in_redis_the_ledger_and_the_outbox_count(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("recount")
    spend = await _spend(lengine, ledger, a, 10)
    first = await refund(lengine, ledger, a, 3, spend)
    assert await ledger.write_through(lengine, a, [first.outbox_entry_id])
    await flush_all(lengine, ledger)  # the spend and the first refund: in the ledger only
    # A refund that only the outbox holds (PostgreSQL did not take it yet).
    await lengine.credit(a, 4, "refund", refund_of=spend)
    key = lengine.keys.refund_count(a, spend)
    await lengine.redis.delete(key)  # as when the count expires
    with pytest.raises(RefundNotCounted):
        await lengine.credit(a, 1, "refund", refund_of=spend)
    with pytest.raises(RefundExceedsSpend) as refused:
        await refund(lengine, ledger, a, 4, spend)
    assert refused.value.extra["refunded"] == 7
    await refund(lengine, ledger, a, 3, spend)
    assert await lengine.redis.hgetall(key) == {"cost": "10", "refunded": "10"}
    assert (await lengine.get_account(a)).balance == 1000


async def test_a_spend_still_in_the_outbox_is_found(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("pending")
    spend = await _spend(lengine, ledger, a, 6)  # not flushed: only the outbox has it
    assert (await refund(lengine, ledger, a, 6, spend)).balance == 1000
    with pytest.raises(RefundExceedsSpend):
        await refund(lengine, ledger, a, 1, spend)


async def test_a_spend_still_in_the_outbox_is_counted_without_the_ledger(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    """While the spend waits in the outbox so do all its refunds: PostgreSQL is not needed."""
    a = acct("no-ledger")
    spend = await _spend(lengine, ledger, a, 8)
    assert (await refund(lengine, None, a, 5, spend)).balance == 997
    await lengine.redis.delete(lengine.keys.refund_count(a, spend))  # as when the count expires
    with pytest.raises(RefundExceedsSpend) as refused:
        await refund(lengine, None, a, 4, spend)
    assert (refused.value.extra["cost"], refused.value.extra["refunded"]) == (8, 5)
    assert (await refund(lengine, None, a, 3, spend)).balance == 1000


async def test_a_flushed_spend_is_not_refunded_while_the_ledger_is_down(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    """Counting a spend that left the outbox needs PostgreSQL: without it, a clear 503 and
    nothing done, and the same refund goes through once the ledger is back."""
    a = acct("ledger-down")
    spend = await _spend(lengine, ledger, a, 8)
    await flush_all(lengine, ledger)
    down = await Ledger.connect(f"postgresql://postgres@127.0.0.1:{free_port()}/none")
    try:
        before = await _outbox_len(lengine, a)
        for unreachable in (None, down):
            with pytest.raises(LedgerUnavailable, match="nothing was done"):
                await refund(lengine, unreachable, a, 5, spend, idempotency_key="rf-down")
        assert (await lengine.get_account(a)).balance == 992
        assert await _outbox_len(lengine, a) == before
    finally:
        await down.aclose()
    assert (await refund(lengine, ledger, a, 5, spend, idempotency_key="rf-down")).balance == 997


async def test_only_a_spend_of_this_account_may_be_refunded(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a, b = acct("mine"), acct("theirs")
    spend_of_b = await _spend(lengine, ledger, b, 5)
    await _spend(lengine, ledger, a, 5)
    grant = await lengine.credit(a, 10, "grant")
    await flush_all(lengine, ledger)
    unflushed_of_b = (await lengine.consume(b, "api_call", 2)).transaction_id
    before = (await lengine.get_account(a)).balance
    outbox = await _outbox_len(lengine, a)
    details = set()
    for spend in (spend_of_b, unflushed_of_b, grant.transaction_id, ids.new_id()):
        with pytest.raises(SpendNotFound) as refused:
            await refund(lengine, ledger, a, 1, spend)
        details.add(refused.value.detail.replace(spend, "<id>"))
    # One answer for all: another account's spend is not told apart from no spend at all.
    assert details == {"no spend <id> on this account"}
    assert (await lengine.get_account(a)).balance == before
    assert await _outbox_len(lengine, a) == outbox
    assert not await lengine.redis.exists(lengine.keys.refund_count(a, spend_of_b))


@pytest.mark.parametrize(
    ("kind", "refund_of"),
    [("refund", None), ("refund", "not-an-id"), ("refund", ""), ("grant", "x"), ("earn", "x")],
)
async def test_a_refund_names_a_spend_and_nothing_else_does(
    lengine: CreditEngine, ledger: Ledger, acct: Acct, kind: str, refund_of: str | None
) -> None:
    a = acct("named")
    await _spend(lengine, ledger, a, 5)
    outbox = await _outbox_len(lengine, a)
    if refund_of == "x":
        refund_of = ids.new_id()
    with pytest.raises(ValidationError) as refused:
        await lengine.credit(a, 1, kind, refund_of=refund_of)
    assert refused.value.extra == {"field": "refund_of"}
    assert await _outbox_len(lengine, a) == outbox
    assert (await lengine.get_account(a)).balance == 995


async def test_a_replayed_refund_counts_once(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("replay")
    spend = await _spend(lengine, ledger, a, 5)
    other = (await lengine.consume(a, "api_call", 5)).transaction_id
    first = await refund(lengine, ledger, a, 5, spend, idempotency_key="rf-1")
    again = await refund(lengine, ledger, a, 5, spend, idempotency_key="rf-1")
    assert (again.transaction_id, again.balance, again.replayed) == (
        first.transaction_id, first.balance, True)  # fmt: skip
    with pytest.raises(IdempotencyConflict):
        await refund(lengine, ledger, a, 5, other, idempotency_key="rf-1")
    assert await lengine.redis.hget(lengine.keys.refund_count(a, spend), "refunded") == "5"
    assert (await lengine.get_account(a)).balance == 995


async def test_a_capture_is_a_spend_that_may_be_refunded(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("capture")
    await _spend(lengine, ledger, a, 1)
    hold = await lengine.hold(a, amount=50)
    captured = await lengine.capture(a, hold.hold_id, 30)
    await flush_all(lengine, ledger)
    with pytest.raises(RefundExceedsSpend):
        await refund(lengine, ledger, a, 31, captured.transaction_id)
    assert (await refund(lengine, ledger, a, 30, captured.transaction_id)).balance == 999


async def test_the_count_in_redis_wins_over_an_older_one_from_the_ledger(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    """A count read from the ledger before a concurrent refund ran is not taken over it."""
    a = acct("stale")
    spend = await _spend(lengine, ledger, a, 8)
    await refund(lengine, ledger, a, 6, spend)
    with pytest.raises(RefundExceedsSpend):
        await lengine.credit(a, 3, "refund", refund_of=spend, counted=RefundCount(8, 0))


# -- Redis lost its data --------------------------------------------------------------------

RECOVERY_CONFIG = """
partitions = 4
default_tier = "pro"
[resources]
unit = 1
[tiers.pro]
credit_limit = 1000
monthly_grant = 1000
"""


@pytest.fixture
async def private_engine(make_engine: EngineFactory, private_redis: RedisProcess) -> CreditEngine:
    return await make_engine(RECOVERY_CONFIG, url=private_redis.url)


@pytest.fixture
async def restarted(private_redis: RedisProcess, key_prefix: str) -> AsyncIterator[CreditEngine]:
    engine = CreditEngine.from_url(
        private_redis.url, parse_config(RECOVERY_CONFIG), prefix=key_prefix
    )
    yield engine
    await engine.aclose()


# On a redis-server of its own, never the suite's Redis: a cluster variant would be the same.
@pytest.mark.backend_neutral
async def test_after_redis_lost_its_data_and_recovery_ran_the_ledger_counts(
    private_engine: CreditEngine,
    restarted: CreditEngine,
    own_ledger: Ledger,
    private_redis: RedisProcess,
) -> None:
    engine, a = private_engine, "recovered"
    made = await engine.upsert_account(a, tier="pro")
    await own_ledger.write_through(engine, a, list(made.outbox_entry_ids))
    spend = (await engine.consume(a, "unit", 9)).transaction_id
    done = await refund(engine, own_ledger, a, 5, spend)
    assert await own_ledger.write_through(engine, a, [done.outbox_entry_id])
    await flush_all(engine, own_ledger)

    client = aioredis.Redis.from_url(private_redis.url)
    await client.flushall()
    await client.aclose()
    assert await restarted.initialize(allow_fresh=False) == "needs_recovery"
    await recover_async(restarted, own_ledger)

    with pytest.raises(RefundExceedsSpend) as refused:
        await refund(restarted, own_ledger, a, 5, spend)
    assert refused.value.extra == {"cost": 9, "refunded": 5, "refundable": 4}
    assert (await refund(restarted, own_ledger, a, 4, spend)).balance == 1000


# -- adjustments and captures never take available below zero ------------------------------


async def test_a_debit_below_what_holds_leave_is_refused_and_captures_stay_above_the_floor(
    lengine: CreditEngine, acct: Acct
) -> None:
    a = acct("adjust")
    await lengine.upsert_account(a, tier="free")  # balance 100
    hold = await lengine.hold(a, amount=80)
    outbox = await _outbox_len(lengine, a)
    for debit in (-1000, -21):
        with pytest.raises(AdjustBelowFloor) as refused:
            await lengine.credit(a, debit, "adjust")
        assert refused.value.extra == {"available": 20}
    assert await _outbox_len(lengine, a) == outbox
    view = await lengine.get_account(a)
    assert (view.balance, view.reserved, view.available) == (100, 80, 20)
    assert (await lengine.credit(a, -20, "adjust")).available == 0
    captured = await lengine.capture(a, hold.hold_id)
    assert (captured.cost, captured.balance, captured.remaining) == (80, 0, 0)
    with pytest.raises(AdjustBelowFloor):
        await lengine.credit(a, -1, "adjust")
    assert (await lengine.credit(a, 5, "adjust")).balance == 5


async def test_an_overdraft_counts_toward_what_a_debit_may_take(
    lengine: CreditEngine, acct: Acct
) -> None:
    a = acct("overdraft")
    await lengine.upsert_account(a, tier="free", overdraft_limit=30)  # available 130
    await lengine.hold(a, amount=100)
    with pytest.raises(AdjustBelowFloor):
        await lengine.credit(a, -31, "adjust")
    assert (await lengine.credit(a, -30, "adjust")).balance == 70


async def test_a_capture_behind_which_the_floor_rose_is_refused_and_the_hold_stays(
    lengine: CreditEngine, acct: Acct
) -> None:
    a = acct("floor")
    await lengine.upsert_account(a, tier="free", overdraft_limit=50)  # available 150
    hold = await lengine.hold(a, amount=150)
    await lengine.upsert_account(a, overdraft_limit=0)  # now 100 - 150 + 0 = -50 available
    with pytest.raises(InsufficientCredits) as refused:
        await lengine.capture(a, hold.hold_id)
    assert (refused.value.required, refused.value.available) == (150, 100)
    view = await lengine.get_account(a)
    assert (view.balance, view.reserved) == (100, 150)
    captured = await lengine.capture(a, hold.hold_id, 100)
    assert (captured.balance, captured.remaining) == (0, 0)


@pytest.mark.parametrize("account", ["alice", "org:42:key-7", "{brace", "}", "a" * 128])
def test_a_refund_count_lives_in_its_account_slot(account: str) -> None:
    keys = KeySpace("qg", 64)
    spend = ids.new_id()
    slots = {key_slot(k.encode()) for k in keys.script_keys(account, "req-1")}
    assert slots == {key_slot(keys.refund_count(account, spend).encode())}
    assert slots == {key_slot(keys.refund_count(account).encode())}
