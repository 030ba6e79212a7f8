"""What each operation does to the books: buckets, holds, renewal, recovery markers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import cast

import fakeredis
import pytest
from tests.conftest import EngineFactory
from tests.engine.configs import PLAIN

from quotagate.config import parse_config
from quotagate.engine import CreditEngine
from quotagate.errors import (
    AccountBanned,
    AccountNotFound,
    AccountNotLoaded,
    ConfigError,
    HoldNotFound,
    InsufficientCredits,
    UnknownTier,
)
from quotagate.ledger.outbox import RawEntries


@pytest.fixture(params=["redis", "fakeredis"])
async def plain(
    request: pytest.FixtureRequest, make_engine: EngineFactory, key_prefix: str
) -> AsyncIterator[CreditEngine]:
    """The engine on the real server, and again on fakeredis (logic only, never atomicity)."""
    if request.param == "redis":
        yield await make_engine(PLAIN)
        return
    engine = CreditEngine(
        fakeredis.FakeAsyncRedis(decode_responses=True), parse_config(PLAIN), prefix=key_prefix
    )
    await engine.initialize()
    yield engine
    await engine.aclose()


async def _entries(engine: CreditEngine, account: str) -> list[dict[str, str]]:
    stream = engine.keys.outbox(engine.keys.partition_of(account))
    return [f for _, f in cast(RawEntries, await engine.redis.xrange(stream)) if f["a"] == account]


async def test_new_account_opens_with_its_tiers_monthly_grant(make_engine: EngineFactory) -> None:
    engine = await make_engine()  # the shipped config: opening_grant = true
    created = await engine.upsert_account("new", tier="pro")
    assert created.created and created.balance == 1000
    state = await engine.get_account("new")
    assert (state.monthly_credits, state.purchased_credits) == (1000, 0)
    kinds = [(e["t"], e.get("amt")) for e in await _entries(engine, "new")]
    assert kinds == [("account", None), ("grant", "1000")]
    updated = await engine.upsert_account("new", status="banned")
    assert not updated.created and updated.balance == 1000 and updated.status == "banned"


async def test_monthly_credits_are_spent_before_purchased(plain: CreditEngine) -> None:
    await plain.upsert_account("acct", tier="pro")
    await plain.renew("acct", "2099-01")  # reset policy: monthly bucket = 1000
    await plain.credit("acct", 50)
    await plain.consume("acct", "unit", 990)
    state = await plain.get_account("acct")
    assert (state.monthly_credits, state.purchased_credits) == (10, 50)
    result = await plain.consume("acct", "unit", 30)
    assert result.balance == 30
    state = await plain.get_account("acct")
    assert (state.monthly_credits, state.purchased_credits) == (0, 30)
    last = (await _entries(plain, "acct"))[-1]
    assert (last["amt"], last["dm"], last["bal"]) == ("-30", "-10", "30")


async def test_hold_capture_release(plain: CreditEngine) -> None:
    await plain.upsert_account("acct")
    await plain.credit("acct", 100)
    hold = await plain.hold("acct", resource="premium_feature", units=4)
    assert (hold.amount, hold.available) == (20, 80)
    with pytest.raises(InsufficientCredits):
        await plain.consume("acct", "unit", 81)
    captured = await plain.capture("acct", hold.hold_id, 15)
    assert (captured.cost, captured.remaining, captured.balance) == (15, 85, 85)
    spend = (await _entries(plain, "acct"))[-1]
    assert (spend["t"], spend["res"], spend["u"], spend["hold"]) == (
        "spend",
        "premium_feature",
        "4",
        hold.hold_id,
    )
    with pytest.raises(HoldNotFound):
        await plain.capture("acct", hold.hold_id)
    other = await plain.hold("acct", amount=40)
    released = await plain.release("acct", other.hold_id)
    assert (released.released, released.available) == (40, 85)
    with pytest.raises(HoldNotFound):
        await plain.release("acct", other.hold_id)


async def test_expired_hold_releases_itself(plain: CreditEngine) -> None:
    await plain.upsert_account("acct")
    await plain.credit("acct", 10)
    hold = await plain.hold("acct", amount=10, ttl_seconds=1)
    assert (await plain.check("acct", "unit")).allowed is False
    await asyncio.sleep(1.1)
    assert (await plain.check("acct", "unit", 10)).allowed is True  # read-only view
    with pytest.raises(HoldNotFound):
        await plain.capture("acct", hold.hold_id)
    assert (await plain.consume("acct", "unit", 10)).remaining == 0  # lazily released


async def test_sweep_releases_holds_of_idle_accounts(plain: CreditEngine) -> None:
    for name in ("a", "b", "c"):
        await plain.upsert_account(name)
        await plain.credit(name, 10)
        await plain.hold(name, amount=4, ttl_seconds=1)
    await plain.hold("c", amount=3, ttl_seconds=600)
    await asyncio.sleep(1.1)
    released = [0, 0]
    for p in range(plain.config.partitions):
        holds, credits, _ = await plain.expire_due_holds(p)
        released = [released[0] + holds, released[1] + credits]
    assert released == [3, 12]
    assert [(await plain.get_account(n)).reserved for n in ("a", "b", "c")] == [0, 0, 3]
    raw = await plain.redis.hget(plain.keys.account("c").account, "r")
    assert raw == "3"


async def test_overdraft_limit_extends_available(plain: CreditEngine) -> None:
    await plain.upsert_account("acct", overdraft_limit=5)
    await plain.credit("acct", 10)
    assert (await plain.consume("acct", "unit", 15)).balance == -5
    with pytest.raises(InsufficientCredits):
        await plain.consume("acct", "unit")


async def test_banned_accounts_cannot_spend(plain: CreditEngine) -> None:
    await plain.upsert_account("acct", status="banned")
    await plain.credit("acct", 10)  # credits may still be given
    with pytest.raises(AccountBanned):
        await plain.consume("acct", "unit")
    with pytest.raises(AccountBanned):
        await plain.hold("acct", amount=1)


async def test_renewal_policies(plain: CreditEngine) -> None:
    await plain.upsert_account("adder", tier="free")  # add, limit 100
    await plain.credit("adder", 30)
    renewed = await plain.renew("adder", "2099-01")
    assert (renewed.renewed, renewed.granted, renewed.balance) == (True, 70, 100)
    again = await plain.renew("adder", "2099-01")
    assert (again.renewed, again.reason) == (False, "already_renewed")

    await plain.upsert_account("resetter", tier="pro")  # reset, grant 1000
    await plain.renew("resetter", "2099-01")
    await plain.consume("resetter", "unit", 400)
    await plain.credit("resetter", 5)
    renewed = await plain.renew("resetter", "2099-02")
    assert (renewed.granted, renewed.expired, renewed.balance) == (1000, 600, 1005)
    entries = await _entries(plain, "resetter")
    tail = [(e["t"], e.get("amt"), e.get("rp")) for e in entries[-3:]]
    assert tail == [("expire", "-600", None), ("grant", "1000", None), ("account", None, "2099-02")]

    await plain.upsert_account("banned", status="banned")
    skipped = await plain.renew("banned", "2099-01")
    assert (skipped.renewed, skipped.reason, skipped.balance) == (False, "banned", 0)


async def test_missing_account_is_not_found_or_not_loaded(plain: CreditEngine) -> None:
    with pytest.raises(AccountNotFound):
        await plain.consume("ghost", "unit")
    await plain.upsert_account("acct")
    await plain.credit("acct", 10)
    # Redis lost the data: markers and account gone together.
    keys = [k async for k in plain.redis.scan_iter(match=f"{plain.keys.prefix}:*")]
    await plain.redis.delete(*keys)
    for op in (plain.consume("acct", "unit"), plain.credit("acct", 1), plain.get_account("acct")):
        with pytest.raises(AccountNotLoaded):
            await op
    with pytest.raises(AccountNotLoaded):
        await plain.upsert_account("fresh")


async def test_restore_rebuilds_an_account(plain: CreditEngine) -> None:
    created_at = datetime(2026, 1, 2, tzinfo=UTC)
    assert await plain.restore(
        "back", tier="pro", status="active", overdraft_limit=2, monthly_credits=40,
        purchased_credits=60, renewed_period="2026-11", last_reset_at=None, created_at=created_at,
    )  # fmt: skip
    state = await plain.get_account("back")
    assert (state.balance, state.available, state.tier, state.created_at) == (
        100,
        102,
        "pro",
        created_at,
    )
    assert not await plain.restore(
        "back", tier="pro", status="active", overdraft_limit=0, monthly_credits=0,
        purchased_credits=0, renewed_period="", last_reset_at=None, created_at=created_at,
    )  # fmt: skip
    assert (await plain.get_account("back")).balance == 100


async def test_a_restart_with_another_partition_count_is_refused(
    make_engine: EngineFactory,
) -> None:
    await make_engine(PLAIN)
    with pytest.raises(ConfigError, match="partitions"):
        await make_engine("partitions = 32\n" + PLAIN)


async def test_initialize_without_fresh_start_leaves_partitions_closed(
    make_engine: EngineFactory, redis_url: str, key_prefix: str
) -> None:
    engine = CreditEngine.from_url(redis_url, parse_config(PLAIN), prefix=key_prefix)
    try:
        assert await engine.initialize(allow_fresh=False) == "needs_recovery"
        with pytest.raises(AccountNotLoaded):
            await engine.upsert_account("acct")
        await engine.mark_ready()
        assert await engine.initialize() == "ready"
        assert (await engine.upsert_account("acct")).created
    finally:
        await engine.aclose()


async def test_each_partition_indexes_its_accounts(plain: CreditEngine) -> None:
    created_at = datetime(2026, 1, 2, tzinfo=UTC)
    names = [f"user-{i}" for i in range(300)]
    await asyncio.gather(*(plain.upsert_account(n) for n in names))
    await plain.upsert_account("user-0", tier="pro")  # an update does not index twice
    await plain.restore(
        "restored", tier="free", status="active", overdraft_limit=0, monthly_credits=0,
        purchased_credits=1, renewed_period="", last_reset_at=None, created_at=created_at,
    )  # fmt: skip
    found: dict[int, set[str]] = {}
    for p in range(plain.config.partitions):
        async for batch in plain.account_ids(p, count=10):
            found.setdefault(p, set()).update(batch)
    assert set().union(*found.values()) == {*names, "restored"}
    for p, accounts in found.items():
        assert all(plain.keys.partition_of(a) == p for a in accounts)


async def test_renewal_is_one_script_call_with_terms_from_the_config(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(PLAIN)
    await engine.upsert_account("acct", tier="free")
    calls: list[str] = []
    run = engine.runner.run

    async def counting(script, keys, args):  # type: ignore[no-untyped-def]
        calls.append(script.name)
        return await run(script, keys, args)

    engine.runner.run = counting  # type: ignore[method-assign]
    result = await engine.renew("acct", "2099-01")
    assert (result.renewed, result.granted) == (True, 100)
    assert calls == ["renew"]
    # a tier removed from the config is refused by the script itself
    await engine.redis.hset(engine.keys.account("acct").account, "tier", "gone")
    with pytest.raises(UnknownTier):
        await engine.renew("acct", "2099-02")
