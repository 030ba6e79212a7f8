"""Pools in the scripts: a member's charge draws from its pool, within its limit per period of
the pool, optionally its own credits first; the pool and the member are charged in one script."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from tests.conftest import EngineFactory
from tests.engine.configs import PLAIN

from quotagate import ids
from quotagate.engine import Charge, CreditEngine
from quotagate.errors import (
    AccountBanned,
    InsufficientCredits,
    InvalidAccountId,
    InvalidAmount,
    MemberLimitReached,
    PoolNotFound,
    ValidationError,
)
from quotagate.ledger.outbox import RawEntries


async def _entries(engine: CreditEngine, account: str) -> list[dict[str, str]]:
    stream = engine.keys.outbox(engine.keys.partition_of(account))
    return [f for _, f in cast(RawEntries, await engine.redis.xrange(stream)) if f["a"] == account]


async def _pool(make_engine: EngineFactory, credits: int = 100) -> CreditEngine:
    engine = await make_engine(PLAIN)
    await engine.upsert_account("acme", tier="free")
    if credits:
        await engine.credit("acme", credits, "earn")
    return engine


def test_member_ids_name_their_pool_once() -> None:
    assert ids.check_account_id("acme~alice") == "acme~alice"
    assert ids.pool_of("acme~alice") == "acme"
    assert ids.pool_of("acme") is None
    for bad in ("acme~", "~alice", "a~b~c", "acme.~alice", "acme~ali/ce"):
        with pytest.raises(InvalidAccountId):
            ids.check_account_id(bad)


async def test_a_member_lives_in_its_pools_partition(make_engine: EngineFactory) -> None:
    engine = await make_engine(PLAIN)
    for name in ("alice", "bob", "x" * 128):
        assert engine.keys.partition_of(f"acme~{name}") == engine.keys.partition_of("acme")


async def test_a_member_of_no_pool_is_refused_and_nothing_is_written(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(PLAIN)
    with pytest.raises(PoolNotFound):
        await engine.upsert_account("ghost~alice")
    assert await engine.redis.exists(engine.keys.account("ghost~alice").account) == 0
    assert await _entries(engine, "ghost~alice") == []


async def test_member_settings_belong_to_members(make_engine: EngineFactory) -> None:
    engine = await _pool(make_engine)
    with pytest.raises(ValidationError) as caught:
        await engine.upsert_account("acme", member_limit=10)
    assert caught.value.extra["field"] == "member_limit"
    with pytest.raises(ValidationError):
        await engine.upsert_account("acme", own_credits_first=True)
    with pytest.raises(InvalidAmount):
        await engine.upsert_account("acme~alice", member_limit=-1)
    assert await engine.redis.exists(engine.keys.account("acme~alice").account) == 0


async def test_the_pool_pays_a_members_charge_and_its_row_names_the_member(
    make_engine: EngineFactory,
) -> None:
    engine = await _pool(make_engine, 100)
    await engine.upsert_account("acme~alice", member_limit=50)
    r = await engine.consume("acme~alice", "unit", 30)
    assert (r.cost, r.remaining) == (30, 20)  # the limit leaves 20 of the pool's 70
    assert r.pool is not None
    assert (r.pool.pool_id, r.pool.paid, r.pool.pool_balance, r.pool.limit_remaining) == (
        "acme", 30, 70, 20,
    )  # fmt: skip
    spend = (await _entries(engine, "acme"))[-1]
    assert (spend["t"], spend["amt"], spend["pm"], spend["id"]) == (
        "spend", "-30", "acme~alice", r.transaction_id,
    )  # fmt: skip
    assert (spend["res"], spend["u"]) == ("unit", "30")
    assert [e["t"] for e in await _entries(engine, "acme~alice")] == ["account"]
    member = await engine.get_account("acme~alice")
    assert member.balance == 0
    assert member.membership is not None
    assert (member.membership.pool_id, member.membership.member_limit, member.membership.used) == (
        "acme", 50, 30,
    )  # fmt: skip
    assert (await engine.get_account("acme")).balance == 70


async def test_a_charge_past_the_members_limit_is_refused_and_writes_nothing(
    make_engine: EngineFactory,
) -> None:
    engine = await _pool(make_engine, 100)
    await engine.upsert_account("acme~alice", member_limit=25)
    await engine.consume("acme~alice", "unit", 20)
    before = await _entries(engine, "acme")
    with pytest.raises(MemberLimitReached) as caught:
        await engine.consume("acme~alice", "unit", 6)
    assert (caught.value.required, caught.value.available) == (6, 5)
    assert caught.value.code == "member_limit_reached"
    assert isinstance(caught.value, InsufficientCredits)  # a hook refuses it as such
    assert await _entries(engine, "acme") == before
    assert (await engine.get_account("acme")).balance == 80
    assert (await engine.check("acme~alice", "unit", 5)).allowed
    assert not (await engine.check("acme~alice", "unit", 6)).allowed
    await engine.consume("acme~alice", "unit", 5)  # exactly to the limit
    with pytest.raises(MemberLimitReached):
        await engine.consume("acme~alice", "unit", 1)


async def test_the_pools_balance_bounds_every_member(make_engine: EngineFactory) -> None:
    engine = await _pool(make_engine, 10)
    await engine.upsert_account("acme~alice")  # no limit of its own
    await engine.upsert_account("acme~bob", member_limit=100)
    await engine.consume("acme~alice", "unit", 7)
    with pytest.raises(InsufficientCredits) as caught:
        await engine.consume("acme~bob", "unit", 4)
    assert not isinstance(caught.value, MemberLimitReached)
    assert caught.value.available == 3
    assert (await engine.check("acme~bob", "unit", 3)).available == 3


async def test_own_credits_first_then_the_pool_in_two_rows(make_engine: EngineFactory) -> None:
    engine = await _pool(make_engine, 100)
    await engine.upsert_account("acme~alice", member_limit=50, own_credits_first=True)
    await engine.credit("acme~alice", 10, "earn")
    assert (await engine.check("acme~alice", "unit", 60)).available == 60
    r = await engine.consume("acme~alice", "unit", 25)
    assert r.pool is not None and r.pool.paid == 15
    assert r.remaining == 35  # nothing of its own left, 35 of its limit
    own = (await _entries(engine, "acme~alice"))[-1]
    assert (own["id"], own["amt"], own["bal"]) == (r.transaction_id, "-10", "0")
    assert "res" not in own  # the units are counted once, on the pool's row
    pool_row = (await _entries(engine, "acme"))[-1]
    assert pool_row["id"] == r.transaction_id[:14] + "8" + r.transaction_id[15:]
    assert (pool_row["amt"], pool_row["pm"], pool_row["u"]) == ("-15", "acme~alice", "25")
    # Its own credits only: a charge its own credits cover leaves the pool alone.
    await engine.credit("acme~alice", 5, "earn")
    r2 = await engine.consume("acme~alice", "unit", 5)
    assert r2.pool is not None and r2.pool.paid == 0
    assert (await _entries(engine, "acme~alice"))[-1]["u"] == "5"
    assert (await engine.get_account("acme")).balance == 85


async def test_without_own_credits_first_the_pool_pays_all(make_engine: EngineFactory) -> None:
    engine = await _pool(make_engine, 100)
    await engine.upsert_account("acme~alice")
    await engine.credit("acme~alice", 10, "earn")
    await engine.consume("acme~alice", "unit", 4)
    assert (await engine.get_account("acme~alice")).balance == 10
    assert (await engine.get_account("acme")).balance == 96


async def test_the_limit_counts_again_when_the_pool_renews(make_engine: EngineFactory) -> None:
    engine = await _pool(make_engine, 0)
    await engine.renew("acme", "2099-01")  # 100 monthly credits
    await engine.upsert_account("acme~alice", member_limit=30)
    await engine.consume("acme~alice", "unit", 30)
    with pytest.raises(MemberLimitReached):
        await engine.consume("acme~alice", "unit", 1)
    await engine.renew("acme", "2099-02")
    membership = (await engine.get_account("acme~alice")).membership
    assert membership is not None and membership.used == 0
    r = await engine.consume("acme~alice", "unit", 30)
    assert r.pool is not None and r.pool.limit_remaining == 0


async def test_a_banned_pool_refuses_its_members(make_engine: EngineFactory) -> None:
    engine = await _pool(make_engine, 100)
    await engine.upsert_account("acme~alice")
    await engine.upsert_account("acme", status="banned")
    with pytest.raises(AccountBanned, match="pool"):
        await engine.consume("acme~alice", "unit", 1)
    with pytest.raises(AccountBanned):
        await engine.check("acme~alice", "unit", 1)


async def test_settings_change_and_the_limit_can_be_lifted(make_engine: EngineFactory) -> None:
    engine = await _pool(make_engine, 100)
    await engine.upsert_account("acme~alice", member_limit=5)
    await engine.upsert_account("acme~alice", tier="pro")  # the limit is kept
    with pytest.raises(MemberLimitReached):
        await engine.consume("acme~alice", "unit", 6)
    await engine.upsert_account("acme~alice", member_limit=None)
    await engine.consume("acme~alice", "unit", 60)
    events = [e for e in await _entries(engine, "acme~alice") if e["t"] == "account"]
    assert [(e.get("pl"), e["pf"]) for e in events] == [("5", "0"), ("5", "0"), (None, "0")]


async def test_a_replayed_member_charge_is_charged_once(make_engine: EngineFactory) -> None:
    engine = await _pool(make_engine, 100)
    await engine.upsert_account("acme~alice", member_limit=50)
    first = await engine.consume("acme~alice", "unit", 10, idempotency_key="k1")
    again = await engine.consume("acme~alice", "unit", 10, idempotency_key="k1")
    assert again.replayed and again.transaction_id == first.transaction_id
    assert (await engine.get_account("acme")).balance == 90
    membership = (await engine.get_account("acme~alice")).membership
    assert membership is not None and membership.used == 10
    assert (await _entries(engine, "acme"))[-1]["ik"].endswith("k1")


async def test_charges_of_a_member_in_one_call_keep_to_its_limit(
    make_engine: EngineFactory,
) -> None:
    engine = await _pool(make_engine, 1000)
    await engine.upsert_account("acme~alice", member_limit=35)
    outcomes = await engine.consume_many([Charge("acme~alice", "unit", 10)] * 5)
    charged = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(charged) == 3
    assert all(isinstance(o, MemberLimitReached) for o in outcomes[3:])
    assert (await engine.get_account("acme")).balance == 970


async def test_a_pool_grant_past_its_expiry_is_not_spent_by_a_member(
    make_engine: EngineFactory,
) -> None:
    engine = await _pool(make_engine, 0)
    await engine.upsert_account("acme~alice")
    soon = datetime.now(UTC) + timedelta(milliseconds=200)
    await engine.grant("acme", 50, expires_at=soon)
    await engine.consume("acme~alice", "unit", 10)
    while datetime.now(UTC) < soon + timedelta(milliseconds=50):
        await engine.check("acme", "unit", 1)
    with pytest.raises(InsufficientCredits):
        await engine.consume("acme~alice", "unit", 10)
    rows = await _entries(engine, "acme")
    assert [(e["t"], e["amt"]) for e in rows if e["t"] in ("spend", "expire")] == [
        ("spend", "-10"), ("expire", "-40"),
    ]  # fmt: skip


async def test_a_usage_repair_writes_only_what_it_read(make_engine: EngineFactory) -> None:
    engine = await _pool(make_engine, 100)
    await engine.upsert_account("acme~alice", member_limit=50)
    await engine.consume("acme~alice", "unit", 10)
    with pytest.raises(ValidationError):
        await engine.set_pool_usage("acme", 10, 5)
    assert not await engine.set_pool_usage("acme~alice", 9, 5)  # not what it holds now
    assert await engine.set_pool_usage("acme~alice", 10, 5)
    membership = (await engine.get_account("acme~alice")).membership
    assert membership is not None and membership.used == 5
    await engine.renew("acme", "2099-01")
    assert not await engine.set_pool_usage("acme~alice", 5, 7)  # the pool renewed since
    with pytest.raises(InvalidAmount):
        await engine.set_pool_usage("acme~alice", -1, 7)


async def test_a_members_shadow_charge_is_decided_as_its_charge_would_be(
    make_engine: EngineFactory,
) -> None:
    engine = await _pool(make_engine, 100)
    await engine.upsert_account("acme~alice", member_limit=10)
    first = await engine.shadow("acme~alice", "unit", 6)
    assert (first.shadow, first.remaining) == ("charged", 4)  # the pool pays, within the limit
    second = await engine.shadow("acme~alice", "unit", 6)
    assert second.shadow == "insufficient_credits"  # its shadow spend counts against the limit
    assert (await engine.get_account("acme")).balance == 100  # nothing was charged
    await engine.upsert_account("acme~bob", member_limit=10, own_credits_first=True)
    await engine.credit("acme~bob", 5, "earn")
    assert (await engine.shadow("acme~bob", "unit", 15)).shadow == "charged"
    await engine.upsert_account("acme", status="banned")
    assert (await engine.shadow("acme~bob", "unit", 1)).shadow == "account_banned"
