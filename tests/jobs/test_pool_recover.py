"""Recovery of a pool's members (docs/pools.md): each gets back its limit and own-credits-first
from its row, and what its pool paid for it in the pool's period (``pu``, counted in ``pp``,
the period restored for the pool), counted from the pool's last reset. The ledger is written
by flushing outbox entries in the format the scripts write them, in a database of each test's
own."""

from __future__ import annotations

import asyncio

import pytest
from tests.conftest import EngineFactory
from tests.ledger.pool_entries import PoolOutbox

from quotagate.engine import CreditEngine
from quotagate.engine.replies import unwrap
from quotagate.errors import ValidationError
from quotagate.jobs.recover import recover_async
from quotagate.ledger import Ledger, flush_all

CONFIG = """
partitions = 1
[resources]
unit = 1
[tiers.free]
credit_limit = 100
monthly_grant = 100
"""
"""One partition: a pool, its members and their outbox entries all in it."""

MEMBER_FIELDS = ("pl", "pf", "pu", "pp")


@pytest.fixture
async def engine(make_engine: EngineFactory) -> CreditEngine:
    return await make_engine(CONFIG)


async def redis_ms(engine: CreditEngine) -> int:
    seconds, micros = await engine.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def member_fields(engine: CreditEngine, account_id: str) -> dict[str, str]:
    values = await engine.redis.hmget(engine.keys.account(account_id).account, *MEMBER_FIELDS)
    return {name: str(v) for name, v in zip(MEMBER_FIELDS, values, strict=True) if v is not None}


async def renewed_pool(engine: CreditEngine, pool: str) -> PoolOutbox:
    """A pool with members alice (limit 50, own credits first) and bob: charges before the
    pool's renewal for 2026-11, then after it; a refund and the pool's own spend."""
    out = PoolOutbox(engine)
    alice, bob = f"{pool}~alice", f"{pool}~bob"
    await out.event(pool)
    await out.event(alice, pl="50", pf="1")
    await out.event(bob)
    await out.spend(pool, 20, member=alice)  # the period before: not counted
    await asyncio.sleep(0.005)
    await out.event(pool, reset_ms=str(await redis_ms(engine)), rp="2026-11")
    await asyncio.sleep(0.005)
    spent = await out.spend(pool, 4, member=alice)
    await out.spend(pool, 6, member=alice)
    await out.spend(pool, 7, member=bob)
    await out.spend(pool, 1)
    await out.spend(alice, 2)  # its own credits: the pool paid none of it
    await out.transaction(pool, "refund", 4, rf=spent)  # a refund does not lower the usage
    return out


async def test_members_get_their_settings_and_their_usage_in_the_pools_period(
    engine: CreditEngine, own_ledger: Ledger
) -> None:
    pool = "acme"
    await renewed_pool(engine, pool)
    await flush_all(engine, own_ledger)
    tally = await recover_async(engine, own_ledger)

    assert (tally.ledger_accounts, tally.restored) == (3, 3)
    assert await member_fields(engine, f"{pool}~alice") == {
        "pl": "50", "pf": "1", "pu": "10", "pp": "2026-11",
    }  # fmt: skip
    assert await member_fields(engine, f"{pool}~bob") == {"pu": "7", "pp": "2026-11"}
    assert await member_fields(engine, pool) == {}
    pool_hash = await engine.redis.hgetall(engine.keys.account(pool).account)
    assert (pool_hash["rp"], int(pool_hash["b"])) == ("2026-11", -(20 + 4 + 6 + 7 + 1) + 4)


async def test_a_forced_recovery_counts_the_pending_spends_of_the_period(
    engine: CreditEngine, own_ledger: Ledger
) -> None:
    pool = "acme"
    out = await renewed_pool(engine, pool)
    await flush_all(engine, own_ledger)
    await out.spend(pool, 5, member=f"{pool}~alice")  # still in the outbox
    await recover_async(engine, own_ledger, force=True)
    assert (await member_fields(engine, f"{pool}~alice"))["pu"] == "15"
    assert (await member_fields(engine, f"{pool}~bob"))["pu"] == "7"


async def test_a_member_of_a_pool_never_reset_counts_every_spend_for_it(
    engine: CreditEngine, own_ledger: Ledger
) -> None:
    pool = "acme"
    out = PoolOutbox(engine)
    await out.event(pool)
    await out.event(f"{pool}~carol", pl="9")
    await out.spend(pool, 3, member=f"{pool}~carol")
    await out.spend(pool, 2, member=f"{pool}~carol")
    await flush_all(engine, own_ledger)
    await recover_async(engine, own_ledger)
    assert await member_fields(engine, f"{pool}~carol") == {"pl": "9", "pu": "5", "pp": ""}


@pytest.mark.parametrize(
    ("account", "member_args", "refused"),
    [
        ("plain", ["5", "", "", ""], "member"),
        ("pool~m", ["-1", "", "", ""], "member_limit"),
        ("pool~m", ["", "2", "", ""], "own_credits_first"),
        ("pool~m", ["", "", "3", "2026-13-01"], "pool_period"),
        ("pool~m", ["", "", "x", "2026-11"], "pool_used"),
        ("pool~m", ["", "", "", "2026-11"], "pool_used"),
    ],
)
async def test_restore_refuses_member_state_it_cannot_write_and_writes_nothing(
    engine: CreditEngine, account: str, member_args: list[str], refused: str
) -> None:
    keys = (*engine.keys.script_keys(account),
            engine.keys.grant_expiry(engine.keys.partition_of(account)))  # fmt: skip
    args = [account, "free", "active", "0", "10", "0", "", "", "1700000000000", "0", "",
            *member_args]  # fmt: skip
    with pytest.raises(ValidationError, match=refused):
        unwrap(await engine.runner.run(engine.scripts["restore"], keys, args))
    assert await engine.redis.exists(engine.keys.account(account).account) == 0


async def test_a_charge_the_pool_paid_gets_its_idempotency_record_back_on_the_member(
    engine: CreditEngine, own_ledger: Ledger
) -> None:
    """A retry of the member's charge after the loss finds its record, as for any charge."""
    out = PoolOutbox(engine)
    await out.event("acme")
    await out.event("acme~alice")
    await out.transaction("acme", "spend", -3, res="unit", u="3", ik="retry-1", pm="acme~alice")
    await flush_all(engine, own_ledger)
    tally = await recover_async(engine, own_ledger)
    assert tally.idempotency_records == 1
    assert await engine.redis.exists(engine.keys.account("acme~alice", "retry-1").idempotency)
    assert not await engine.redis.exists(engine.keys.account("acme", "retry-1").idempotency)
