"""Reservations: hold an estimate, settle the actual cost by a hold id that names its account,
and end unsettled ones by their policy (released, or captured into the outbox)."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from tests.conftest import EngineFactory

from quotagate import ids
from quotagate.engine import CreditEngine
from quotagate.errors import (
    HoldExpired,
    HoldNotFound,
    HoldSettled,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    UnitsNotPriced,
    ValidationError,
)
from quotagate.jobs.expire import expire_all_async
from quotagate.ledger.outbox import RawEntries

CONFIG = """
partitions = 4
opening_grant = false
[resources]
unit = 1
token = 3
[tiers.free]
credit_limit = 1000
monthly_grant = 100
[holds]
min_ttl_seconds = 1
"""


@pytest.fixture
async def engine(make_engine: EngineFactory) -> CreditEngine:
    engine = await make_engine(CONFIG)
    for account in ("alice", "bob"):
        await engine.upsert_account(account)
        await engine.credit(account, 100)
    return engine


async def _spends(engine: CreditEngine, account: str) -> list[dict[str, str]]:
    stream = engine.keys.outbox(engine.keys.partition_of(account))
    entries = cast(RawEntries, await engine.redis.xrange(stream))
    return [f for _, f in entries if f["a"] == account and f["t"] == "spend"]


async def _stored_reserved(engine: CreditEngine, account: str) -> int:
    return int(await engine.redis.hget(engine.keys.account(account).account, "r") or 0)


async def _books(engine: CreditEngine, account: str) -> tuple[int, int, int]:
    state = await engine.get_account(account)
    return state.balance, state.reserved, state.available


async def test_the_hold_id_names_the_account_and_a_settle_needs_nothing_else(
    engine: CreditEngine,
) -> None:
    held = await engine.reserve("alice", amount=30)
    account, hold_uuid = ids.split_account_hold_id(held.hold_id)
    assert account == "alice"
    assert [h.hold_id for h in (await engine.get_account("alice")).holds] == [hold_uuid]
    assert (held.amount, held.available) == (30, 70)
    assert await _books(engine, "alice") == (100, 30, 70)


@pytest.mark.parametrize(
    ("actual", "charged", "shortfall", "released"),
    [(12, 12, 0, 18), (30, 30, 0, 0), (38, 38, 0, 0), (45, 40, 5, 0), (0, 0, 0, 30)],
    ids=["smaller", "equal", "larger-within-overrun", "larger-past-overrun", "zero"],
)
async def test_settle_charges_the_actual_cost_up_to_the_overrun(
    engine: CreditEngine, actual: int, charged: int, shortfall: int, released: int
) -> None:
    held = await engine.reserve("alice", amount=30, max_overrun=10)
    settled = await engine.settle(held.hold_id, amount=actual)
    assert (settled.charged, settled.shortfall, settled.released) == (charged, shortfall, released)
    assert (settled.balance, settled.remaining) == (100 - charged, 100 - charged)
    assert await _books(engine, "alice") == (100 - charged, 0, 100 - charged)
    assert await _stored_reserved(engine, "alice") == 0
    spends = await _spends(engine, "alice")
    if charged:
        assert [(s["id"], s["amt"], s["hold"]) for s in spends] == [
            (settled.transaction_id, str(-charged), ids.split_account_hold_id(held.hold_id)[1])
        ]
    else:
        assert settled.transaction_id is None and spends == []


async def test_an_overrun_is_charged_only_while_the_balance_allows(engine: CreditEngine) -> None:
    """What other holds set aside stays aside, and nothing goes below the floor."""
    held = await engine.reserve("alice", amount=50, max_overrun=1000)
    await engine.hold("alice", amount=40)  # another caller's hold
    settled = await engine.settle(held.hold_id, amount=500)
    assert (settled.charged, settled.shortfall) == (60, 440)
    assert await _books(engine, "alice") == (40, 40, 0)


async def test_settle_in_units_prices_them_as_the_hold_did(engine: CreditEngine) -> None:
    held = await engine.reserve("alice", resource="token", units=5, max_overrun=6)
    assert held.amount == 15
    settled = await engine.settle(held.hold_id, units=7)
    assert (settled.charged, settled.shortfall) == (21, 0)
    [spend] = await _spends(engine, "alice")
    assert (spend["res"], spend["u"], spend["amt"]) == ("token", "7", "-21")
    priced = await engine.reserve("alice", resource="token", units=1)
    with pytest.raises(InvalidAmount, match="actual_cost"):  # 3 x 10^12 credits
        await engine.settle(priced.hold_id, units=10**12)
    await engine.settle(priced.hold_id, units=0)
    fixed = await engine.reserve("alice", amount=5)
    with pytest.raises(UnitsNotPriced):
        await engine.settle(fixed.hold_id, units=1)
    assert (await engine.get_account("alice")).reserved == 5


async def test_a_settled_hold_is_told_apart_from_an_unknown_one(engine: CreditEngine) -> None:
    held = await engine.reserve("alice", amount=10)
    await engine.settle(held.hold_id, amount=4)
    with pytest.raises(HoldSettled):
        await engine.settle(held.hold_id, amount=4)
    with pytest.raises(HoldNotFound):
        await engine.settle(ids.account_hold_id("alice", ids.new_id()), amount=4)
    assert await _books(engine, "alice") == (96, 0, 96)


async def test_a_retried_settle_with_its_key_changes_nothing(engine: CreditEngine) -> None:
    held = await engine.reserve("alice", amount=10, max_overrun=5)
    first = await engine.settle(held.hold_id, amount=13, idempotency_key="s-1")
    again = await engine.settle(held.hold_id, amount=13, idempotency_key="s-1")
    assert again.replayed and not first.replayed
    assert (again.transaction_id, again.charged, again.remaining, again.balance) == (
        first.transaction_id, 13, 87, 87,
    )  # fmt: skip
    with pytest.raises(IdempotencyConflict):
        await engine.settle(held.hold_id, amount=12, idempotency_key="s-1")
    assert len(await _spends(engine, "alice")) == 1
    assert await _books(engine, "alice") == (87, 0, 87)


async def test_a_hold_id_naming_another_account_finds_none_of_this_ones(
    engine: CreditEngine,
) -> None:
    held = await engine.reserve("alice", amount=10)
    _, hold_uuid = ids.split_account_hold_id(held.hold_id)
    forged = ids.account_hold_id("bob", hold_uuid)
    with pytest.raises(HoldNotFound):
        await engine.settle(forged, amount=10)
    assert await _books(engine, "alice") == (100, 10, 90)
    assert await _books(engine, "bob") == (100, 0, 100)
    for bad in ("nope", hold_uuid, held.hold_id + "x", "YWxpY2U=." + hold_uuid):
        with pytest.raises(ValidationError):
            await engine.settle(bad, amount=1)


@pytest.mark.parametrize(
    "body",
    [{"amount": -1}, {"units": -1}, {"amount": 1.5}, {"amount": True}, {"amount": 10**12 + 1}, {}],
)
async def test_bad_settles_are_refused_before_anything_is_written(
    engine: CreditEngine, body: dict[str, object]
) -> None:
    held = await engine.reserve("alice", amount=10)
    with pytest.raises((InvalidAmount, ValidationError)):
        await engine.settle(held.hold_id, **body)  # type: ignore[arg-type]
    assert await _books(engine, "alice") == (100, 10, 90)


async def test_a_reservation_past_its_balance_is_refused(engine: CreditEngine) -> None:
    with pytest.raises(InsufficientCredits):
        await engine.reserve("alice", amount=101)
    assert await _books(engine, "alice") == (100, 0, 100)


async def test_expired_reservations_end_by_their_policy_lazily(engine: CreditEngine) -> None:
    freed = await engine.reserve("alice", amount=20, ttl_seconds=1)
    charged = await engine.reserve("alice", amount=30, ttl_seconds=1, on_expiry="capture")
    # Past the deadline, reads count the captured hold as spent, the released one as free.
    await asyncio.sleep(1.05)
    assert await _books(engine, "alice") == (100, 30, 70)
    with pytest.raises(HoldExpired) as expired:
        await engine.settle(charged.hold_id, amount=1)
    assert expired.value.extra["on_expiry"] == "capture"
    assert await _books(engine, "alice") == (70, 0, 70)
    assert await _stored_reserved(engine, "alice") == 0
    [spend] = await _spends(engine, "alice")
    capture_uuid = ids.split_account_hold_id(charged.hold_id)[1]
    assert (spend["amt"], spend["hold"], spend["d"]) == ("-30", capture_uuid, "hold expired")
    assert spend["id"] != capture_uuid and spend["id"][13:] == capture_uuid[13:]
    with pytest.raises(HoldNotFound):
        await engine.settle(freed.hold_id, amount=1)


async def test_a_charge_ends_expired_reservations_first(engine: CreditEngine) -> None:
    await engine.reserve("alice", amount=30, ttl_seconds=1, on_expiry="capture")
    await asyncio.sleep(1.05)
    charge = await engine.consume("alice", "unit", 5)
    assert (charge.balance, charge.remaining) == (65, 65)
    assert [s["amt"] for s in await _spends(engine, "alice")] == ["-30", "-5"]


async def test_the_sweep_captures_or_releases_by_policy(engine: CreditEngine) -> None:
    await engine.reserve("alice", amount=30, ttl_seconds=1, on_expiry="capture")
    await engine.reserve("bob", amount=25, ttl_seconds=1)
    await engine.reserve("bob", amount=5, ttl_seconds=3600, on_expiry="capture")
    await asyncio.sleep(1.05)
    tally = await expire_all_async(engine)
    assert (tally.holds, tally.credits, tally.captured) == (2, 25, 30)
    assert await _books(engine, "alice") == (70, 0, 70)
    assert await _books(engine, "bob") == (100, 5, 95)
    assert await _stored_reserved(engine, "bob") == 5
    again = await expire_all_async(engine)
    assert (again.holds, again.credits, again.captured) == (0, 0, 0)


async def test_an_expiry_capture_never_takes_the_account_below_its_floor(
    engine: CreditEngine,
) -> None:
    """A renewal or a lower overdraft may leave a hold's credits short: the capture takes
    what there is."""
    await engine.reserve("alice", amount=60, ttl_seconds=1, on_expiry="capture")
    await engine.redis.hset(engine.keys.account("alice").account, "b", "40")  # 40 left
    await asyncio.sleep(1.05)
    tally = await expire_all_async(engine)
    assert tally.captured == 40
    assert await _books(engine, "alice") == (0, 0, 0)
