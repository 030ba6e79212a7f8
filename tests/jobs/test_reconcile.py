"""Reconciliation against real Redis and PostgreSQL: balanced books, drifts found and named,
repairs with adjust rows, and no false alarm while charges and flushes run."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import cast

import asyncpg
import pytest
from tests.conftest import EngineFactory
from tests.jobs.configs import FREE_AND_PRO

from quotagate.engine import CreditEngine
from quotagate.errors import AccountNotLoaded, InsufficientCredits
from quotagate.ids import new_id
from quotagate.jobs.reconcile import CAUSES, reconcile_async
from quotagate.jobs.repair import repair_account
from quotagate.ledger import Ledger, flush_all
from quotagate.ledger.ledger import BooksReading

CONFIG = FREE_AND_PRO


async def _traffic(engine: CreditEngine, ledger: Ledger, n: int) -> list[str]:
    """Accounts with grants (written through), spends, holds captured and released."""
    ids = [f"r-{i:03d}" for i in range(n)]
    for a in ids:
        made = await engine.upsert_account(a, tier="pro" if int(a[2:]) % 2 else "free")
        await ledger.write_through(engine, a, made.outbox_entry_ids)
    for i, a in enumerate(ids):
        await engine.consume(a, "unit", 1 + i % 7)
        credit = await engine.credit(a, 5 + i)
        await ledger.write_through(engine, a, [credit.outbox_entry_id])
        hold = await engine.hold(a, amount=10)
        if i % 2:
            await engine.capture(a, hold.hold_id, 4)
        else:
            await engine.release(a, hold.hold_id)
    return ids


async def _adjust_rows(url: str) -> list[tuple[str, int]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT account_id, amount FROM credit_transactions WHERE type = 'adjust'"
            " ORDER BY account_id"
        )
    finally:
        await conn.close()
    return [(r["account_id"], r["amount"]) for r in rows]


async def _sql(url: str, sql: str, *args: object) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def test_books_balance_with_pending_entries_and_after_the_flush(
    make_engine: EngineFactory, own_ledger: Ledger
) -> None:
    engine = await make_engine(CONFIG)
    await _traffic(engine, own_ledger, 40)
    before = await reconcile_async(engine, own_ledger)  # spends and holds still in the outbox
    assert (before.accounts, before.drifts) == (40, [])
    await flush_all(engine, own_ledger)
    after = await reconcile_async(engine, own_ledger)
    assert (after.accounts, after.drifts) == (40, [])


async def test_drifts_in_redis_and_postgres_are_named_and_repaired_with_adjust_rows(
    make_engine: EngineFactory, own_ledger: Ledger, own_ledger_url: str
) -> None:
    engine = await make_engine(CONFIG)
    await _traffic(engine, own_ledger, 12)
    await flush_all(engine, own_ledger)
    # Redis changed behind the engine's back: no outbox entry.
    await engine.redis.hincrby(engine.keys.account("r-001").account, "b", 7)
    # A ledger row changed in Postgres.
    await _sql(
        own_ledger_url,
        "UPDATE credit_transactions SET amount = amount - 3 WHERE id ="
        " (SELECT id FROM credit_transactions WHERE account_id = 'r-002' AND type = 'grant'"
        " ORDER BY id LIMIT 1)",
    )
    # The snapshot changed in Postgres.
    await _sql(
        own_ledger_url, "UPDATE user_credits SET credits = credits + 11 WHERE account_id = 'r-003'"
    )
    # An account Redis lost.
    await engine.redis.delete(engine.keys.account("r-004").account)
    balance_4 = (await own_ledger.snapshots(["r-004"]))["r-004"].credits

    report = await reconcile_async(engine, own_ledger)
    found = {(d.account_id, d.check): (d.expected, d.found, d.cause) for d in report.drifts}
    b1 = (await engine.get_account("r-001")).balance
    snaps = await own_ledger.snapshots(["r-002", "r-003"])
    s2, s3 = snaps["r-002"].credits, snaps["r-003"].credits
    assert found == {
        ("r-001", "redis"): (b1 - 7, b1, CAUSES["redis"]),
        ("r-002", "ledger"): (s2 - 3, s2, CAUSES["ledger"]),
        ("r-003", "redis"): (s3, s3 - 11, CAUSES["redis"]),
        ("r-003", "ledger"): (s3 - 11, s3, CAUSES["ledger"]),
        ("r-004", "redis"): (balance_4, None, CAUSES["missing_in_redis"]),
    }

    repairs = {}
    for account in ("r-001", "r-002", "r-003", "r-004"):
        drifts = [d for d in report.drifts if d.account_id == account]
        repairs[account] = await repair_account(engine, own_ledger, account, drifts)
    assert {a: (r.action, r.amount) for a, r in repairs.items()} == {
        "r-001": ("adjust", 7),
        "r-002": ("adjust", 3),
        "r-003": ("snapshot", 0),
        "r-004": ("restored", 0),
    }
    assert await _adjust_rows(own_ledger_url) == [("r-001", 7), ("r-002", 3)]
    assert (await engine.get_account("r-004")).balance == balance_4

    again = await reconcile_async(engine, own_ledger)
    assert (again.accounts, again.drifts) == (12, [])
    # Charging goes on normally on every repaired account, and the books stay balanced.
    for account in ("r-001", "r-002", "r-003", "r-004"):
        await engine.consume(account, "unit", 2)
    await flush_all(engine, own_ledger)
    assert (await reconcile_async(engine, own_ledger)).drifts == []


async def test_an_account_redis_has_and_the_ledger_does_not(
    make_engine: EngineFactory, own_ledger: Ledger, own_ledger_url: str
) -> None:
    engine = await make_engine(CONFIG)
    await _traffic(engine, own_ledger, 3)
    await flush_all(engine, own_ledger)
    stray = engine.keys.account("stray")
    await engine.redis.hset(
        stray.account,
        mapping={"m": "0", "b": "40", "r": "0", "od": "0", "st": "active", "tier": "free",
                 "ca": "1700000000000", "rp": "", "rst": ""},
    )  # fmt: skip
    report = await reconcile_async(engine, own_ledger)
    assert [(d.account_id, d.expected, d.found, d.cause) for d in report.drifts] == [
        ("stray", 0, 40, CAUSES["missing_in_ledger"])
    ]
    repair = await repair_account(engine, own_ledger, "stray", report.drifts)
    assert (repair.action, repair.amount) == ("adjust", 40)
    assert (await reconcile_async(engine, own_ledger)).drifts == []
    snap = (await own_ledger.snapshots(["stray"]))["stray"]
    assert (snap.tier, snap.status, snap.credits) == ("free", "active", 40)


async def test_no_false_drift_while_charges_and_flushes_run(
    make_engine: EngineFactory, own_ledger: Ledger
) -> None:
    engine = await make_engine(CONFIG)
    ids = await _traffic(engine, own_ledger, 30)
    stop = asyncio.Event()

    async def charge() -> int:
        n = 0
        while not stop.is_set():
            for a in ids:
                with contextlib.suppress(InsufficientCredits):
                    await engine.consume(a, "unit", 1)
                    n += 1
            await asyncio.sleep(0)
        return n

    async def flush() -> None:
        while not stop.is_set():
            await flush_all(engine, own_ledger)
            await asyncio.sleep(0.01)

    charging, flushing = asyncio.create_task(charge()), asyncio.create_task(flush())
    try:
        reports = [await reconcile_async(engine, own_ledger) for _ in range(4)]
    finally:
        stop.set()
        charged, _ = await asyncio.gather(charging, flushing)
    assert charged > 0
    assert [r.drifts for r in reports] == [[]] * 4


class FlushBetweenReadings(Ledger):
    """The real ledger, with one charge flushed between the Redis and the Postgres reading
    of an account: the race a live system has, made to happen every time."""

    def __init__(self, ledger: Ledger, engine: CreditEngine, account_id: str) -> None:
        super().__init__(ledger.pool)
        self.engine, self.account_id, self.armed = engine, account_id, True
        self.readings = 0

    async def read_books(
        self, account_ids: Sequence[str], transaction_ids: Sequence[str]
    ) -> BooksReading:
        self.readings += self.account_id in account_ids
        if self.armed and self.account_id in account_ids:
            self.armed = False
            await self.engine.consume(self.account_id, "unit", 3)
            await flush_all(self.engine, self)
        return await super().read_books(account_ids, transaction_ids)


async def test_a_flush_between_the_two_readings_is_not_called_drift(
    make_engine: EngineFactory, own_ledger: Ledger
) -> None:
    engine = await make_engine(CONFIG)
    await _traffic(engine, own_ledger, 10)
    racing = FlushBetweenReadings(own_ledger, engine, "r-005")
    report = await reconcile_async(engine, racing)
    # The race happened, made the account look off, and a second reading cleared it.
    assert (racing.armed, racing.readings) == (False, 2)
    assert (report.accounts, report.drifts) == (10, [])


async def test_a_repair_is_exact_while_the_account_is_charged_and_flushed(
    make_engine: EngineFactory, own_ledger: Ledger, own_ledger_url: str
) -> None:
    engine = await make_engine(CONFIG)
    await _traffic(engine, own_ledger, 4)
    await engine.credit("r-001", 5000)
    await flush_all(engine, own_ledger)
    await engine.redis.hincrby(engine.keys.account("r-001").account, "b", 25)
    stop = asyncio.Event()

    async def charge() -> None:
        while not stop.is_set():  # about a thousand a second: the balance lasts
            await engine.consume("r-001", "unit", 1)
            await asyncio.sleep(0.001)

    async def flush() -> None:
        while not stop.is_set():
            await flush_all(engine, own_ledger)

    tasks = [asyncio.create_task(charge()), asyncio.create_task(flush())]
    try:
        await asyncio.sleep(0.2)
        repair = await repair_account(engine, own_ledger, "r-001")
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    await flush_all(engine, own_ledger)
    assert (repair.action, repair.amount) == ("adjust", 25)
    assert (await reconcile_async(engine, own_ledger)).drifts == []
    assert await _adjust_rows(own_ledger_url) == [("r-001", 25)]


async def test_reconciliation_refuses_a_redis_that_awaits_recovery(
    make_engine: EngineFactory, own_ledger: Ledger
) -> None:
    engine = await make_engine(CONFIG)
    await engine.redis.hdel(engine.keys.cfg(2), "ready")
    with pytest.raises(AccountNotLoaded, match="quotagate recover"):
        await reconcile_async(engine, own_ledger)


async def test_a_grant_whose_remaining_was_changed_is_named(
    make_engine: EngineFactory, own_ledger: Ledger, own_ledger_url: str
) -> None:
    """A grant of 100, a spend that drew 30 of it and one that drew nothing from it, another
    grant expired with 20 left: the books of both grants balance until one remaining is
    changed outside the flush."""
    engine = await make_engine(CONFIG)
    account, promo, gone = "granted", new_id(), new_id()
    rows = [
        ("grant", 100, promo, None), ("grant", 20, gone, None),
        ("spend", -30, None, json.dumps({promo: 30})), ("spend", -4, None, None),
        ("expire", -20, gone, None),
    ]  # fmt: skip
    conn = await asyncpg.connect(own_ledger_url)
    try:
        for kind, amount, grant_id, draws in rows:
            await conn.execute(
                "INSERT INTO credit_transactions (id, account_id, amount, type, balance_after,"
                " created_at, grant_id, grant_draws) VALUES ($1, $2, $3, $4, 0, now(), $5, $6)",
                new_id(), account, amount, kind, grant_id, draws,
            )  # fmt: skip
        for grant_id, amount, remaining, reason in (
            (promo, 100, 70, None),
            (gone, 20, 0, "expired"),
        ):
            await conn.execute(
                "INSERT INTO credit_grants (id, account_id, amount, remaining, source, priority,"
                " created_at, end_reason, transaction_id)"
                " VALUES ($1, $2, $3, $4, 'promotion', 50, now(), $5, 't')",
                grant_id, account, amount, remaining, reason,
            )  # fmt: skip
        assert (await reconcile_async(engine, own_ledger)).drifts == []

        await conn.execute("UPDATE credit_grants SET remaining = 75 WHERE id = $1", promo)
    finally:
        await conn.close()

    report = await reconcile_async(engine, own_ledger)
    [drift] = report.drifts
    assert (drift.account_id, drift.check, drift.grant_id) == (account, "grant", promo)
    assert (drift.expected, drift.found, drift.difference) == (70, 75, 5)
    assert drift.cause == CAUSES["grant"]
    others = [p for p in range(engine.config.partitions) if p != drift.partition]
    assert (await reconcile_async(engine, own_ledger, partitions=others)).drifts == []

    await _sql(own_ledger_url, "DELETE FROM credit_grants WHERE id = $1", gone)
    lost = [d for d in (await reconcile_async(engine, own_ledger)).drifts if d.grant_id == gone]
    assert [(d.expected, d.found, d.cause) for d in lost] == [(None, 20, CAUSES["grant_unknown"])]


async def test_what_redis_holds_of_each_grant_is_checked_against_the_ledger(
    make_engine: EngineFactory, own_ledger: Ledger
) -> None:
    """Grants made, drawn on, expired and voided through the engine, some flushed and some
    still pending: the books balance; then one grant's remainder in the account hash is
    changed behind the engine's back (the balance with it) and that grant is named."""
    engine = await make_engine(CONFIG)
    account = "grants-redis"
    await engine.upsert_account(account)
    kept = await engine.grant(account, 50, priority=10)  # before the monthly credits
    voided = await engine.grant(account, 40, priority=0)
    await engine.consume(account, "unit", 15)  # 15 from the priority-0 grant
    await flush_all(engine, own_ledger)
    await engine.void_grant(account, voided.grant_id)  # pending: not flushed yet
    await engine.consume(account, "unit", 5)  # pending: 5 from the other grant
    assert (await reconcile_async(engine, own_ledger)).drifts == []

    key = engine.keys.account(account).account
    g = cast(str | None, await engine.redis.hget(key, "g"))
    assert g is not None and g.startswith(f"{kept.grant_id}|45|")
    await engine.redis.hset(key, "g", g.replace(f"{kept.grant_id}|45|", f"{kept.grant_id}|47|"))
    drifts = (await reconcile_async(engine, own_ledger)).drifts
    grant_drifts = [d for d in drifts if d.check == "redis_grant"]
    assert [(d.grant_id, d.expected, d.found) for d in grant_drifts] == [(kept.grant_id, 45, 47)]
    assert {d.check for d in drifts} == {"redis", "redis_grant"}  # the balance moved with it
