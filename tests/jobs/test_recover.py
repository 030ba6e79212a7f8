"""Recovery after Redis lost everything (FLUSHALL on a private Redis): charges are refused
until an account is restored, then every balance is back and charging goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis
from tests.conftest import EngineFactory
from tests.jobs.configs import FREE_AND_PRO
from tests.support.servers import RedisProcess

from quotagate import ids
from quotagate.config import parse_config
from quotagate.engine import CreditEngine, current_period
from quotagate.engine.replies import unwrap
from quotagate.engine.results import Account, Grant
from quotagate.errors import (
    AccountNotLoaded,
    IdempotencyConflict,
    InsufficientCredits,
    RecoveryRefused,
    ValidationError,
)
from quotagate.jobs.reconcile import reconcile_async
from quotagate.jobs.recover import (
    SNAPSHOT_COLUMNS,
    recover_async,
    restore_row,
)
from quotagate.ledger import Ledger, flush_all

# Every test wipes a redis-server of its own, never the suite's Redis: a cluster variant would be
# the same test again.
pytestmark = pytest.mark.backend_neutral

CONFIG = FREE_AND_PRO

ACCOUNTS = [f"u-{i:03d}" for i in range(60)]


@pytest.fixture
async def engine(make_engine: EngineFactory, private_redis: RedisProcess) -> CreditEngine:
    return await make_engine(CONFIG, url=private_redis.url)


@pytest.fixture
async def restarted(private_redis: RedisProcess, key_prefix: str) -> AsyncIterator[CreditEngine]:
    """What a gateway builds after Redis came back empty: it may not open Redis as new."""
    engine = CreditEngine.from_url(private_redis.url, parse_config(CONFIG), prefix=key_prefix)
    yield engine
    await engine.aclose()


async def _populate(engine: CreditEngine, ledger: Ledger) -> dict[str, Account]:
    for i, a in enumerate(ACCOUNTS):
        made = await engine.upsert_account(
            a, tier="pro" if i % 3 == 0 else "free", overdraft_limit=5 if i % 7 == 0 else None
        )
        await ledger.write_through(engine, a, made.outbox_entry_ids)
        await engine.consume(a, "unit", 1 + i % 9)
        if i % 4 == 0:
            await engine.credit(a, 20 + i)
        if i % 3 == 0:
            await engine.renew(a, "2099-05")  # reset: expire + grant, stamps the period
        if i % 10 == 9:
            await engine.upsert_account(a, status="banned")
    await flush_all(engine, ledger)
    return {a: await engine.get_account(a) for a in ACCOUNTS}


def _state(a: Account) -> tuple[object, ...]:
    return (
        a.tier, a.status, a.balance, a.monthly_credits, a.purchased_credits,
        a.overdraft_limit, a.created_at, a.last_reset_at,
    )  # fmt: skip


async def _flushall(server: RedisProcess) -> None:
    client = aioredis.Redis.from_url(server.url)
    await client.flushall()
    await client.aclose()


async def test_flushall_then_recover_brings_every_balance_back(
    engine: CreditEngine,
    restarted: CreditEngine,
    own_ledger: Ledger,
    private_redis: RedisProcess,
) -> None:
    before = await _populate(engine, own_ledger)
    await _flushall(private_redis)
    assert await restarted.initialize(allow_fresh=False) == "needs_recovery"

    # Before recovery: refused, never charged against an empty balance.
    for call in (
        restarted.consume("u-001", "unit"),
        restarted.get_account("u-002"),
        restarted.hold("u-003", amount=1),
        restarted.upsert_account("newcomer"),
    ):
        with pytest.raises(AccountNotLoaded):
            await call

    # One account restored: it charges; the others are still refused.
    async with own_ledger.pool.acquire() as conn:
        row = await conn.fetchrow(
            f"SELECT {SNAPSHOT_COLUMNS} FROM user_credits WHERE account_id = 'u-001'"
        )
    assert await restore_row(restarted, row)
    await restarted.consume("u-001", "unit")
    with pytest.raises(AccountNotLoaded):
        await restarted.consume("u-004", "unit")
    await restarted.credit("u-001", 1)  # its balance is back; 1 moved to purchased credits
    # Those two are in the outbox only: recovery wants them in the ledger first.
    with pytest.raises(RecoveryRefused):
        await recover_async(restarted, own_ledger)
    await flush_all(restarted, own_ledger)

    tally = await recover_async(restarted, own_ledger)
    assert (tally.ledger_accounts, tally.restored, tally.already_present) == (60, 59, 1)
    after = {a: await restarted.get_account(a) for a in ACCOUNTS}
    assert {a: _state(s) for a, s in after.items() if a != "u-001"} == {
        a: _state(s) for a, s in before.items() if a != "u-001"
    }
    assert after["u-001"].balance == before["u-001"].balance
    # The renewed period comes back as it was: the one renewed (2099-05) or the opening month.
    periods = {a: s.renewed_period for a, s in after.items()}
    assert periods == {a: s.renewed_period for a, s in before.items()}
    assert set(periods.values()) == {"2099-05", current_period()}
    assert await restarted.is_ready()

    # Charging goes on: the right balance, the floor where it was, new accounts allowed.
    pro = after["u-000"]  # overdraft 5
    charged = await restarted.consume("u-000", "unit", pro.balance + 5)
    assert charged.balance == -5
    with pytest.raises(InsufficientCredits):
        await restarted.consume("u-000", "unit")
    await restarted.upsert_account("newcomer")
    # Renewal knows each account's period: none is given twice (opened this month, or
    # renewed for 2099-05).
    assert (await restarted.renew("u-004")).reason == "already_renewed"
    assert (await restarted.renew("u-003", "2099-05")).reason == "already_renewed"
    await flush_all(restarted, own_ledger)
    assert (await reconcile_async(restarted, own_ledger)).drifts == []

    again = await recover_async(restarted, own_ledger)
    assert (again.restored, again.already_present) == (0, 61)


async def test_recovery_refuses_while_the_outbox_holds_entries(
    engine: CreditEngine, own_ledger: Ledger, key_prefix: str, private_redis: RedisProcess
) -> None:
    await _populate(engine, own_ledger)
    await engine.consume("u-001", "unit", 2)  # not flushed
    await engine.redis.delete(engine.keys.account("u-002").account)  # and one account lost
    with pytest.raises(RecoveryRefused, match="quotagate flush"):
        await recover_async(engine, own_ledger)
    assert await engine.redis.exists(engine.keys.account("u-002").account) == 0

    snapshot = await own_ledger.snapshots(["u-001", "u-002"])
    balance_1 = (await engine.get_account("u-001")).balance
    tally = await recover_async(engine, own_ledger, force=True)
    assert (tally.restored, tally.already_present) == (1, 59)
    assert tally.outbox_entries >= 1
    # Forced: the account Redis kept is left as it is (its pending spend included)...
    assert (await engine.get_account("u-001")).balance == balance_1 == snapshot["u-001"].credits - 2
    # ...and the lost one comes back from its snapshot.
    assert (await engine.get_account("u-002")).balance == snapshot["u-002"].credits
    await flush_all(engine, own_ledger)
    assert (await reconcile_async(engine, own_ledger)).drifts == []


@pytest.mark.parametrize("tier", ["free", "pro"])
async def test_a_renewal_survives_recovery_whether_it_granted_or_not(
    engine: CreditEngine, restarted: CreditEngine, own_ledger: Ledger, private_redis: RedisProcess,
    tier: str,
) -> None:  # fmt: skip
    """free ("add") at its credit limit is renewed with 0 granted; pro ("reset") with an expiry
    and a grant. Either way the period is done: after FLUSHALL and recovery, renewing the same
    period again grants nothing, and the books balance."""
    period = "2099-07"
    account = f"renewed-{tier}"
    made = await engine.upsert_account(account, tier=tier)
    await own_ledger.write_through(engine, account, made.outbox_entry_ids)
    await engine.consume(account, "unit", 7)
    if tier == "free":
        await engine.credit(account, 7)  # back at the limit: the renewal has room for nothing
    first = await engine.renew(account, period)
    assert first.renewed
    assert (first.granted, first.expired) == ((0, 0) if tier == "free" else (1000, 993))
    await engine.consume(account, "unit", 10)  # room that a second renewal would fill
    await flush_all(engine, own_ledger)
    before = await engine.get_account(account)

    await _flushall(private_redis)
    await recover_async(restarted, own_ledger)
    again = await restarted.renew(account, period)
    assert (again.renewed, again.granted, again.expired, again.reason) == (
        False, 0, 0, "already_renewed",
    )  # fmt: skip
    after = await restarted.get_account(account)
    assert (after.balance, after.monthly_credits, after.renewed_period) == (
        before.balance, before.monthly_credits, period,
    )  # fmt: skip
    await flush_all(restarted, own_ledger)
    assert (await reconcile_async(restarted, own_ledger)).drifts == []


async def test_recovery_rebuilds_the_idempotency_records_still_within_their_window(
    engine: CreditEngine,
    restarted: CreditEngine,
    own_ledger: Ledger,
    private_redis: RedisProcess,
) -> None:
    """After the loss a retry replays its first answer, byte for byte the record the script
    wrote, for consumes (API and hook) and credits; a capture's retry is refused, not charged."""
    made = await engine.upsert_account("u-idem", tier="pro")
    await own_ledger.write_through(engine, "u-idem", made.outbox_entry_ids)
    meta = {"b": [1, 2], "a": "x"}
    charge = await engine.consume(
        "u-idem", "unit", 3, description="d", metadata=meta, idempotency_key="c-1"
    )
    hooked = await engine.consume_soon(
        "u-idem", "unit", description="GET /x", idempotency_key="r-1", idempotency_scope="hook"
    )
    grant = await engine.credit("u-idem", 40, "earn", idempotency_key="g-1")
    adjust = await engine.credit("u-idem", -5, "adjust", idempotency_key="a-1")
    hold = await engine.hold("u-idem", resource="unit", units=2, idempotency_key="h-1")
    capture = await engine.capture("u-idem", hold.hold_id, idempotency_key="cap-1")
    records: dict[str, tuple[bytes | str | None, int]] = {}
    for key in ("c-1", "hook r-1", "g-1", "a-1"):
        k = engine.keys.account("u-idem", key).idempotency
        records[key] = (await engine.redis.get(k), await engine.redis.pttl(k))
    await flush_all(engine, own_ledger)
    balance = (await engine.get_account("u-idem")).balance
    await _flushall(private_redis)

    await restarted.initialize(allow_fresh=False)
    tally = await recover_async(restarted, own_ledger)
    assert tally.idempotency_records == 5  # four above, and the capture's as a consume's
    for key, (record, ttl_ms) in records.items():
        k = restarted.keys.account("u-idem", key).idempotency
        rebuilt, left_ms = await restarted.redis.get(k), await restarted.redis.pttl(k)
        assert isinstance(record, str)
        assert rebuilt == record.replace(grant.outbox_entry_id, "0-1").replace(
            adjust.outbox_entry_id, "0-1"
        )
        assert ttl_ms - 10_000 < left_ms <= ttl_ms

    again = await restarted.consume(
        "u-idem", "unit", 3, description="d", metadata=meta, idempotency_key="c-1"
    )
    assert (again.transaction_id, again.cost, again.remaining, again.balance, again.replayed) == (
        charge.transaction_id, 3, charge.remaining, charge.balance, True,
    )  # fmt: skip
    hook_again = await restarted.consume_soon(
        "u-idem", "unit", description="GET /x", idempotency_key="r-1", idempotency_scope="hook"
    )
    assert (hook_again.transaction_id, hook_again.replayed) == (hooked.transaction_id, True)
    grant_again = await restarted.credit("u-idem", 40, "earn", idempotency_key="g-1")
    assert (grant_again.transaction_id, grant_again.balance) == (
        grant.transaction_id,
        grant.balance,
    )
    assert grant_again.replayed
    adjust_again = await restarted.credit("u-idem", -5, "adjust", idempotency_key="a-1")
    assert (adjust_again.transaction_id, adjust_again.replayed) == (adjust.transaction_id, True)
    with pytest.raises(IdempotencyConflict):
        await restarted.capture("u-idem", hold.hold_id, idempotency_key="cap-1")
    assert capture.cost == 2
    assert (await restarted.get_account("u-idem")).balance == balance  # nothing charged again
    assert await own_ledger.write_through(restarted, "u-idem", [grant_again.outbox_entry_id])


async def _ledger_grant(
    conn: asyncpg.Connection, account_id: str, *, amount: int, remaining: int, priority: int,
    source: str = "promotion", expires_at: datetime | None = None, end_reason: str | None = None,
) -> str:  # fmt: skip
    """A grant as the flush leaves it: its grant row, its credit_grants row, the snapshot
    raised by what is left of a live one (what it lost went with rows this test leaves out;
    an ended one gave up the rest)."""
    grant_id, txn_id = ids.new_id(), ids.new_id()
    await conn.execute(
        "INSERT INTO credit_transactions (id, account_id, amount, type, balance_after,"
        " created_at, grant_id) VALUES ($1, $2, $3, 'grant', 0, now(), $4)",
        txn_id, account_id, remaining, grant_id,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO credit_grants (id, account_id, amount, remaining, source, priority,"
        " expires_at, created_at, ended_at, end_reason, transaction_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, now(), CASE WHEN $8::text IS NULL THEN NULL"
        " ELSE now() END, $8, $9)",
        grant_id, account_id, amount, remaining, source, priority, expires_at, end_reason, txn_id,
    )  # fmt: skip
    await conn.execute(
        "UPDATE user_credits SET credits = credits + $2 WHERE account_id = $1",
        account_id, remaining if end_reason is None else 0,
    )  # fmt: skip
    return grant_id


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


async def test_explicit_grants_survive_a_wipe_and_recovery_in_spend_order(
    engine: CreditEngine, restarted: CreditEngine, own_ledger: Ledger, private_redis: RedisProcess
) -> None:
    with_grants, without = "granted", "plain"
    for a in (with_grants, without):
        made = await engine.upsert_account(a)
        await own_ledger.write_through(engine, a, made.outbox_entry_ids)
        await engine.consume(a, "unit", 10)
    await flush_all(engine, own_ledger)
    before = await engine.redis.hgetall(engine.keys.account(with_grants).account)
    now = datetime.now(UTC).replace(microsecond=0)
    later, sooner = now + timedelta(days=30), now + timedelta(days=1)
    async with own_ledger.pool.acquire() as conn:
        pack = await _ledger_grant(
            conn, with_grants, amount=50, remaining=50, priority=50, source="purchase"
        )
        promo = await _ledger_grant(
            conn, with_grants, amount=100, remaining=60, priority=10, expires_at=later
        )
        trial = await _ledger_grant(
            conn, with_grants, amount=20, remaining=20, priority=10, expires_at=sooner
        )
        await _ledger_grant(conn, with_grants, amount=30, remaining=0, priority=0,
                            end_reason="spent")  # fmt: skip
        await _ledger_grant(conn, with_grants, amount=40, remaining=40, priority=0,
                            end_reason="voided")  # ended, whatever its remaining says  # fmt: skip

    await _flushall(private_redis)
    await recover_async(restarted, own_ledger)

    state = await restarted.redis.hgetall(restarted.keys.account(with_grants).account)
    assert state["g"] == ";".join([
        f"{trial}|20|{_ms(sooner)}|10|promotion|20",
        f"{promo}|60|{_ms(later)}|10|promotion|100",
        f"{pack}|50|0|50|purchase|50",
    ])  # fmt: skip
    # The snapshot's credits count the grants': the buckets are as they were.
    assert (state["m"], state["b"]) == (before["m"], before["b"])
    index = restarted.keys.grant_expiry(restarted.keys.partition_of(with_grants))
    assert await restarted.redis.zscore(index, with_grants) == _ms(sooner)
    plain = await restarted.redis.hgetall(restarted.keys.account(without).account)
    assert "g" not in plain and plain["b"] == "0"
    assert await restarted.redis.zscore(restarted.keys.grant_expiry(
        restarted.keys.partition_of(without)), without) is None  # fmt: skip


async def test_restore_refuses_grants_it_cannot_write_and_writes_nothing(
    engine: CreditEngine,
) -> None:
    state = {
        "tier": "free", "status": "active", "overdraft_limit": 0, "monthly_credits": 10,
        "purchased_credits": 0, "renewed_period": "", "last_reset_at": None,
        "created_at": datetime.now(UTC),
    }  # fmt: skip
    good = Grant("g-1", "promotion", 10, 5, 5, None, None)
    for bad in (
        replace(good, source="gift"),
        replace(good, priority=101),
        replace(good, id="g|1"),
        replace(good, remaining=0),
        replace(good, id="monthly"),
    ):
        with pytest.raises(ValidationError):
            await engine.restore("refused", grants=[bad], **state)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await engine.restore("refused", grants=[good, good], **state)  # type: ignore[arg-type]
    # The script checks the field too, before its first write.
    keys = (*engine.keys.script_keys("refused"),
            engine.keys.grant_expiry(engine.keys.partition_of("refused")))  # fmt: skip
    args = ["refused", "free", "active", "0", "10", "0", "", "",
            str(_ms(datetime.now(UTC))), "0", "g-1|5|0|50|gift|5"]  # fmt: skip
    with pytest.raises(ValidationError, match="grants"):
        unwrap(await engine.runner.run(engine.scripts["restore"], keys, args))
    assert await engine.redis.exists(engine.keys.account("refused").account) == 0
