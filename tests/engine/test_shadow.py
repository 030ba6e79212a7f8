"""Shadow charges (``lua/shadow.lua``): the decision a charge would get, recorded, with the
account left as it was; and the same decisions as real charges given the same requests."""

from __future__ import annotations

import asyncio
import random
from typing import cast

import pytest
from tests.conftest import EngineFactory

from quotagate.config import parse_config
from quotagate.engine import CreditEngine
from quotagate.engine.charge_list import Charge
from quotagate.engine.results import ChargeResult
from quotagate.errors import (
    ConfigError,
    InsufficientCredits,
    QuotagateError,
    RateLimited,
    ValidationError,
)
from quotagate.ledger.outbox import RawEntries

CONFIG = """
opening_grant = false
[resources]
unit = 1
big = 7
[tiers.free]
credit_limit = 100
monthly_grant = 100
[tiers.limited]
credit_limit = 100
monthly_grant = 100
rate_limit = { requests_per_second = 0.01, burst = 3 }
"""


async def _shadow_entries(engine: CreditEngine, account: str) -> list[dict[str, str]]:
    stream = engine.keys.shadow(engine.keys.partition_of(account))
    raw = cast(RawEntries, await engine.redis.xrange(stream))
    return [f for _, f in raw if f["a"] == account]


async def _account_with(engine: CreditEngine, account: str, credits: int, tier: str) -> None:
    await engine.upsert_account(account, tier=tier)
    await engine.credit(account, credits, "earn")


async def test_a_shadow_charge_records_its_decision_and_charges_nothing(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(CONFIG)
    await _account_with(engine, "sh-1", 10, "free")
    outbox = engine.keys.outbox(engine.keys.partition_of("sh-1"))
    before = await engine.redis.xlen(outbox)

    results = [await engine.shadow("sh-1", "unit", 3, description="GET /x") for _ in range(5)]

    assert [r.shadow for r in results] == ["charged"] * 3 + ["insufficient_credits"] * 2
    assert [r.remaining for r in results] == [7, 4, 1, 1, 1]
    account = await engine.get_account("sh-1")
    assert (account.balance, account.available) == (10, 10)
    assert await engine.redis.xlen(outbox) == before  # no transaction
    entries = await _shadow_entries(engine, "sh-1")
    assert [(e["dec"], e["c"], e["av"], e["d"]) for e in entries] == [
        ("charged", "3", "10", "GET /x"), ("charged", "3", "7", "GET /x"),
        ("charged", "3", "4", "GET /x"), ("insufficient_credits", "3", "1", "GET /x"),
        ("insufficient_credits", "3", "1", "GET /x"),
    ]  # fmt: skip
    assert [e["id"] for e in entries] == [r.transaction_id for r in results]


async def test_unknown_and_banned_accounts_are_recorded_and_bad_input_is_not(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(CONFIG)
    assert (await engine.shadow("sh-nobody", "unit")).shadow == "account_not_found"
    await _account_with(engine, "sh-banned", 50, "free")
    await engine.upsert_account("sh-banned", status="banned")
    assert (await engine.shadow("sh-banned", "unit")).shadow == "account_banned"
    for bad in ({"resource": "nope"}, {"units": 0}, {"description": "a\x00b"}):
        args: dict[str, object] = {"resource": "unit", "units": 1, **bad}
        with pytest.raises(ValidationError):
            await engine.shadow("sh-banned", **args)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await engine.shadow("a b", "unit")
    assert len(await _shadow_entries(engine, "sh-banned")) == 1


async def _real(engine: CreditEngine, account: str, resource: str, units: int) -> tuple[str, int]:
    try:
        r = await engine.consume(account, resource, units)
    except InsufficientCredits:
        return "insufficient_credits", -1
    except RateLimited:
        return "rate_limited", -1
    except QuotagateError as exc:  # pragma: no cover - the test fails on it below
        return type(exc).__name__, -1
    return "charged", r.remaining


@pytest.mark.parametrize("tier", ["free", "limited"])
async def test_shadow_decides_what_the_same_charges_would_get(
    make_engine: EngineFactory, tier: str
) -> None:
    """The same seeded requests, charged on one account and shadowed on its twin: the same
    decision for each, and the shadow balance follows the real one."""
    engine = await make_engine(CONFIG)
    await _account_with(engine, "sh-real", 60, tier)
    await _account_with(engine, "sh-twin", 60, tier)
    rng = random.Random(7)
    for _ in range(40):
        resource, units = rng.choice(["unit", "big"]), rng.randint(1, 3)
        decision, remaining = await _real(engine, "sh-real", resource, units)
        shadow = await engine.shadow("sh-twin", resource, units)
        assert shadow.shadow == decision
        if decision == "charged":
            assert shadow.remaining == remaining
    twin = await engine.get_account("sh-twin")
    assert twin.available == 60


async def test_charges_of_a_shadow_resource_are_shadow_charges_everywhere(
    make_engine: EngineFactory,
) -> None:
    """``shadow.resources``: consume and batch charges of the resource decide, record and
    charge nothing; other resources charge as ever. Bad input is still refused."""
    engine = await make_engine(CONFIG + '\n[shadow]\nresources = ["big"]\n')
    await _account_with(engine, "sh-res", 10, "free")
    first = await engine.consume("sh-res", "big", 1, metadata={"k": 1}, idempotency_key="k1")
    assert (first.shadow, first.cost, first.remaining, first.balance) == ("charged", 7, 3, 10)
    second = await engine.consume("sh-res", "big", 1, idempotency_key="k1")
    assert second.shadow == "insufficient_credits" and not second.replayed
    [batched] = await engine.consume_many([Charge("sh-res", "big", 1)])
    assert isinstance(batched, ChargeResult) and batched.shadow == "insufficient_credits"
    real = await engine.consume("sh-res", "unit", 2)
    assert real.shadow is None and real.remaining == 8
    with pytest.raises(ValidationError):
        await engine.consume("sh-res", "big", 1, metadata={"bad": "\x00"})
    assert len(await _shadow_entries(engine, "sh-res")) == 3
    assert (await engine.get_account("sh-res")).balance == 8


def test_a_shadow_resource_must_be_a_resource() -> None:
    with pytest.raises(ConfigError, match=r"shadow\.resources names 'nope'"):
        parse_config(CONFIG + '\n[shadow]\nresources = ["nope"]\n')


TIERED = (
    CONFIG
    + """
[tiers.trial]
credit_limit = 20
monthly_grant = 20
shadow = true
rate_limit = { requests_per_second = 0.01, burst = 3 }
"""
)


async def test_a_tier_in_shadow_mode_makes_its_accounts_charges_shadow_ones(
    make_engine: EngineFactory,
) -> None:
    """Every charge of an account of a shadow tier, alone, combined with others of the same
    account or in a batch, is decided (rate limit included) and recorded, never charged; the
    other tiers charge as ever; a banned account of the tier is recorded, not refused."""
    engine = await make_engine(TIERED)
    await _account_with(engine, "sh-trial", 10, "trial")
    await _account_with(engine, "sh-free", 10, "free")
    alone = await engine.consume("sh-trial", "unit", 4)
    assert (alone.shadow, alone.remaining) == ("charged", 6)
    together = await asyncio.gather(*(engine.consume("sh-trial", "unit", 1) for _ in range(4)))
    assert [r.shadow for r in together] == ["charged", "charged", "rate_limited", "rate_limited"]
    [batched] = await engine.consume_many([Charge("sh-trial", "unit", 1)])
    assert isinstance(batched, ChargeResult) and batched.shadow == "rate_limited"
    assert (await engine.get_account("sh-trial")).balance == 10
    real = await engine.consume("sh-free", "unit", 4)
    assert real.shadow is None and (await engine.get_account("sh-free")).balance == 6
    await engine.upsert_account("sh-trial", status="banned")
    assert (await engine.consume("sh-trial", "unit")).shadow == "account_banned"
    assert len(await _shadow_entries(engine, "sh-trial")) == 7
    assert await _shadow_entries(engine, "sh-free") == []


async def test_cancelling_a_charge_of_a_shadow_tier_cancels_it(make_engine: EngineFactory) -> None:
    engine = await make_engine(TIERED)
    await _account_with(engine, "sh-cancel", 10, "trial")
    fut = engine.consume_soon("sh-cancel", "unit")
    fut.cancel()
    await asyncio.sleep(0.05)
    assert await _shadow_entries(engine, "sh-cancel") == []
    assert (await engine.consume("sh-cancel", "unit")).shadow == "charged"
