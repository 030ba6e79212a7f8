"""Explicit grants in the scripts: spend order, lazy and swept expiry, void, draws, bad input."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from tests.conftest import EngineFactory
from tests.engine.configs import PLAIN

from quotagate.engine import CreditEngine
from quotagate.errors import (
    GrantNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    TooManyGrants,
    ValidationError,
)
from quotagate.ledger.outbox import RawEntries

SOON = timedelta(milliseconds=300)


async def _entries(engine: CreditEngine, account: str) -> list[dict[str, str]]:
    stream = engine.keys.outbox(engine.keys.partition_of(account))
    return [f for _, f in cast(RawEntries, await engine.redis.xrange(stream)) if f["a"] == account]


async def _account(
    make_engine: EngineFactory, name: str, *, purchased: int = 0, monthly: bool = False
) -> CreditEngine:
    engine = await make_engine(PLAIN)
    await engine.upsert_account(name, tier="free")
    if purchased:
        await engine.credit(name, purchased, "earn")
    if monthly:
        await engine.renew(name, "2099-01")
    return engine


def _soon() -> datetime:
    return datetime.now(UTC) + SOON


async def _remaining(engine: CreditEngine, account: str) -> list[tuple[str, int]]:
    return [(g.id, g.remaining) for g in (await engine.get_account(account)).grants]


async def test_an_account_without_explicit_grants_spends_as_before(
    make_engine: EngineFactory,
) -> None:
    engine = await _account(make_engine, "a", purchased=30, monthly=True)
    await engine.consume("a", "unit", 80)  # the renewal added 70 (limit 100): then 10 purchased
    state = await engine.get_account("a")
    assert (state.monthly_credits, state.purchased_credits) == (0, 20)
    assert await engine.redis.hget(engine.keys.account("a").account, "g") is None
    spend = (await _entries(engine, "a"))[-1]
    assert spend["dm"] == "-70" and "gd" not in spend
    assert [g.id for g in state.grants] == ["purchased"]


async def test_a_spend_takes_by_priority_then_expiry_then_age(make_engine: EngineFactory) -> None:
    engine = await _account(make_engine, "a", purchased=5)
    late = datetime.now(UTC) + timedelta(days=30)
    never = await engine.grant("a", 10)  # priority 50, never expires: after purchased
    dated = await engine.grant("a", 10, expires_at=late)  # priority 50, expires: first
    urgent = await engine.grant("a", 10, priority=5)  # lowest number: before everything
    order = [g for g, _ in await _remaining(engine, "a")]
    assert order == [urgent.grant_id, dated.grant_id, "purchased", never.grant_id]

    await engine.consume("a", "unit", 24)  # urgent 10, dated 10, purchased 4
    assert await _remaining(engine, "a") == [("purchased", 1), (never.grant_id, 10)]
    spend = (await _entries(engine, "a"))[-1]
    assert spend["gd"] == f"{urgent.grant_id}:10,{dated.grant_id}:10"
    assert spend["bal"] == "11" and "dm" not in spend


async def test_the_monthly_grant_expires_at_its_periods_end_under_reset(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(PLAIN)
    await engine.upsert_account("p", tier="pro")
    await engine.renew("p", "2099-01")  # reset: monthly 1000, ends 2099-02-01
    before = await engine.grant("p", 10, expires_at=datetime(2099, 1, 15, tzinfo=UTC))
    after = await engine.grant("p", 10, expires_at=datetime(2099, 3, 1, tzinfo=UTC))
    state = await engine.get_account("p")
    assert [g.id for g in state.grants] == [before.grant_id, "monthly", after.grant_id]
    assert state.grants[1].expires_at == datetime(2099, 2, 1, tzinfo=UTC)
    assert state.next_expiry == datetime(2099, 1, 15, tzinfo=UTC)
    await engine.consume("p", "unit", 15)
    assert await _remaining(engine, "p") == [("monthly", 995), (after.grant_id, 10)]


async def test_a_grant_past_its_expiry_expires_once_in_the_next_script(
    make_engine: EngineFactory,
) -> None:
    engine = await _account(make_engine, "a", purchased=5)
    g = await engine.grant("a", 40, expires_at=_soon(), priority=0)
    await engine.consume("a", "unit", 15)
    await asyncio.sleep(SOON.total_seconds() + 0.1)
    assert (await engine.check("a", "unit", 6)).available == 5  # reads only: counts it gone
    with pytest.raises(InsufficientCredits):
        await engine.consume("a", "unit", 6)  # refused, but the expiry it found is written
    await engine.consume("a", "unit", 1)
    expiries = [e for e in await _entries(engine, "a") if e["t"] == "expire"]
    assert expiries == [
        {"id": expiries[0]["id"], "a": "a", "amt": "-25", "t": "expire", "d": "grant expired",
         "bal": "5", "gr": g.grant_id}
    ]  # fmt: skip
    assert (await engine.get_account("a")).balance == 4
    assert await engine.redis.hget(engine.keys.account("a").account, "g") is None


async def test_the_sweep_expires_the_grants_of_idle_accounts(make_engine: EngineFactory) -> None:
    engine = await _account(make_engine, "idle")
    await engine.upsert_account("busy")
    first = await engine.grant("idle", 7, expires_at=_soon())
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    later = await engine.grant("idle", 3, expires_at=tomorrow)
    await engine.grant("busy", 9, expires_at=_soon())
    await asyncio.sleep(SOON.total_seconds() + 0.1)
    partitions = {engine.keys.partition_of(a) for a in ("idle", "busy")}
    swept = [await engine.expire_due_grants(p) for p in partitions]
    assert (sum(n for n, _ in swept), sum(c for _, c in swept)) == (2, 16)
    assert await _remaining(engine, "idle") == [(later.grant_id, 3)]
    index = engine.keys.grant_expiry(engine.keys.partition_of("idle"))
    assert await engine.redis.zscore(index, "idle") == int(tomorrow.timestamp() * 1000)
    assert await engine.redis.zscore(engine.keys.grant_expiry(engine.keys.partition_of("busy")),
                                     "busy") is None  # fmt: skip
    assert [await engine.expire_due_grants(p) for p in partitions] == [(0, 0)] * len(partitions)
    assert first.grant_id not in {g for g, _ in await _remaining(engine, "idle")}


async def test_voiding_takes_back_what_is_left_once(make_engine: EngineFactory) -> None:
    engine = await _account(make_engine, "a")
    g = await engine.grant("a", 50, description="welcome")
    await engine.consume("a", "unit", 20)
    voided = await engine.void_grant("a", g.grant_id, description="fraud")
    assert (voided.voided, voided.balance, voided.available) == (30, 0, 0)
    last = (await _entries(engine, "a"))[-1]
    assert (last["t"], last["amt"], last["gr"], last["d"]) == ("adjust", "-30", g.grant_id, "fraud")
    for missing in (g.grant_id, "monthly", "purchased", "no-such-grant"):
        with pytest.raises(GrantNotFound):
            await engine.void_grant("a", missing)


async def test_bad_grants_are_refused_and_write_nothing(make_engine: EngineFactory) -> None:
    engine = await _account(make_engine, "a")
    before = await _entries(engine, "a")
    past = datetime.now(UTC) - timedelta(seconds=1)
    refused: list[tuple[dict[str, object], type[Exception]]] = [
        ({"amount": 0}, InvalidAmount),
        ({"amount": 10**13}, InvalidAmount),
        ({"priority": 101}, ValidationError),
        ({"priority": -1}, ValidationError),
        ({"priority": True}, ValidationError),
        ({"source": "gift"}, ValidationError),
        ({"expires_at": past}, ValidationError),
        ({"expires_at": datetime(2099, 1, 1)}, ValidationError),  # no time zone
        ({"description": "nul\x00"}, ValidationError),
    ]
    for change, error in refused:
        args: dict[str, object] = {"amount": 10, **change}
        amount = cast(int, args.pop("amount"))
        with pytest.raises(error):
            await engine.grant("a", amount, **args)  # type: ignore[arg-type]
    assert await _entries(engine, "a") == before
    assert (await engine.get_account("a")).grants == ()


async def test_an_account_holds_at_most_max_grants(make_engine: EngineFactory) -> None:
    from quotagate.engine.grants import MAX_GRANTS

    engine = await _account(make_engine, "a")
    for _ in range(MAX_GRANTS):
        await engine.grant("a", 1)
    with pytest.raises(TooManyGrants):
        await engine.grant("a", 1)
    assert (await engine.get_account("a")).balance == MAX_GRANTS


async def test_a_grant_replays_under_its_idempotency_key(make_engine: EngineFactory) -> None:
    engine = await _account(make_engine, "a")
    first = await engine.grant("a", 10, idempotency_key="promo-1")
    again = await engine.grant("a", 10, idempotency_key="promo-1")
    assert again.replayed and again.grant_id == first.grant_id
    with pytest.raises(IdempotencyConflict):
        await engine.grant("a", 11, idempotency_key="promo-1")
    assert (await engine.get_account("a")).balance == 10


async def test_captures_settles_and_overdrafts_draw_on_grants(make_engine: EngineFactory) -> None:
    engine = await _account(make_engine, "a")
    await engine.upsert_account("a", overdraft_limit=5)
    g = await engine.grant("a", 10)
    hold = await engine.hold("a", amount=8)
    await engine.capture("a", hold.hold_id, 6)
    capture = (await _entries(engine, "a"))[-1]
    assert (capture["hold"], capture["gd"]) == (hold.hold_id, f"{g.grant_id}:6")
    await engine.consume("a", "unit", 7)  # 4 from the grant, 3 of debt on purchased
    state = await engine.get_account("a")
    assert (state.balance, state.purchased_credits, state.available) == (-3, -3, 2)
    assert [x.id for x in state.grants] == []
    assert (await _entries(engine, "a"))[-1]["gd"] == f"{g.grant_id}:4"
    await engine.credit("a", 10, "earn")  # pays the debt first
    assert (await engine.get_account("a")).purchased_credits == 7


async def test_a_relative_expiry_counts_from_redis_and_replays(make_engine: EngineFactory) -> None:
    engine = await _account(make_engine, "a")
    before = datetime.now(UTC)
    first = await engine.grant("a", 10, expires_in=timedelta(hours=1), idempotency_key="trial")
    await asyncio.sleep(0.02)
    again = await engine.grant("a", 10, expires_in=timedelta(hours=1), idempotency_key="trial")
    assert again.replayed and (again.grant_id, again.expires_at) == (first.grant_id,
                                                                     first.expires_at)  # fmt: skip
    assert first.expires_at is not None
    late = first.expires_at - (before + timedelta(hours=1))  # Redis and our clock may differ
    assert -timedelta(milliseconds=100) < late < timedelta(seconds=5)
    with pytest.raises(ValidationError):
        await engine.grant("a", 1, expires_in=timedelta(0))
    with pytest.raises(ValidationError):
        await engine.grant("a", 1, expires_in=timedelta(hours=1), expires_at=_soon())
    assert (await engine.get_account("a")).balance == 10
