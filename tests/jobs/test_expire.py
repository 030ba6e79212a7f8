"""The expiry sweep ends expired holds and expires expired grants on accounts nobody touches."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.conftest import EngineFactory
from tests.jobs.configs import HOLDS
from tests.ledger.support import assert_books_balance, config_text, ledger_rows

from quotagate import ids
from quotagate.engine import CreditEngine
from quotagate.jobs import runtime
from quotagate.jobs.expire import expire_all_async, expire_holds
from quotagate.ledger import Ledger, flush_all
from quotagate.settings import Secret, Settings

CONFIG = HOLDS


async def _reserved(engine: CreditEngine, account_id: str) -> int:
    """The reserved credits as stored (reads that filter expired holds would hide a leak)."""
    return int(await engine.redis.hget(engine.keys.account(account_id).account, "r") or 0)


async def test_sweep_releases_only_what_is_due_on_every_partition(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(CONFIG)
    ids = [f"h-{i:02d}" for i in range(20)]
    for a in ids:
        await engine.upsert_account(a)
        await engine.credit(a, 100)
        await engine.hold(a, amount=30, ttl_seconds=1)
        await engine.hold(a, amount=5, ttl_seconds=3600)
    assert {engine.keys.partition_of(a) for a in ids} == {0, 1, 2, 3}

    early = await expire_all_async(engine)
    assert (early.holds, early.credits) == (0, 0)
    await asyncio.sleep(1.1)
    swept = await expire_all_async(engine)
    assert (swept.holds, swept.credits) == (20, 600)
    for a in ids:
        assert await _reserved(engine, a) == 5
        assert (await engine.get_account(a)).available == 95
    again = await expire_all_async(engine)
    assert (again.holds, again.credits) == (0, 0)
    # The long holds remain indexed for a later sweep; nothing else is.
    indexed = [await engine.redis.zcard(engine.keys.partition_hold_expiry(p)) for p in range(4)]
    assert sum(indexed) == 20


async def test_the_sweep_ends_reservations_by_policy_into_the_ledger(
    make_engine: EngineFactory, ledger: Ledger, key_prefix: str
) -> None:
    """A reservation left unsettled is released, or captured for its estimate with a spend
    that reaches the ledger as any capture's does."""
    engine = await make_engine(config_text(4))
    freed, charged = f"{key_prefix}-freed", f"{key_prefix}-charged"
    for a in (freed, charged):
        made = await engine.upsert_account(a, tier="pro")
        await ledger.write_through(engine, a, list(made.outbox_entry_ids))
    await engine.reserve(freed, amount=40, ttl_seconds=1)
    held = await engine.reserve(charged, amount=40, ttl_seconds=1, on_expiry="capture")
    await asyncio.sleep(1.1)
    tally = await expire_all_async(engine)
    assert (tally.holds, tally.credits, tally.captured) == (2, 40, 40)
    await flush_all(engine, ledger)
    rows = {r["account_id"]: r for r in await ledger_rows(ledger, [freed, charged])
            if r["type"] == "spend"}  # fmt: skip
    assert list(rows) == [charged]
    assert (rows[charged]["amount"], rows[charged]["description"]) == (-40, "hold expired")
    hold_uuid = ids.split_account_hold_id(held.hold_id)[1]
    assert str(rows[charged]["id"])[13:] == hold_uuid[13:]
    assert [(await engine.get_account(a)).balance for a in (freed, charged)] == [1000, 960]
    await assert_books_balance(engine, ledger, [freed, charged])


async def test_the_sweep_expires_an_idle_accounts_grant_into_the_ledger(
    make_engine: EngineFactory, ledger: Ledger, key_prefix: str
) -> None:
    """Nobody touches the account after its grant's expiry: the sweep writes the one expire
    row for what was left of it, and takes the account out of the grant-expiry index."""
    engine = await make_engine(config_text(4))
    idle, kept = f"{key_prefix}-idle", f"{key_prefix}-kept"
    for a in (idle, kept):
        made = await engine.upsert_account(a, tier="pro")
        await ledger.write_through(engine, a, list(made.outbox_entry_ids))
    soon = datetime.now(UTC) + timedelta(seconds=1)
    short = await engine.grant(idle, 70, expires_at=soon, priority=10)
    await engine.grant(kept, 30, expires_at=soon + timedelta(days=1))
    await engine.consume(idle, "api_call", 20)  # taken from the grant first: 50 left of it
    index = [engine.keys.grant_expiry(engine.keys.partition_of(a)) for a in (idle, kept)]

    early = await expire_all_async(engine)
    assert (early.grants, early.grant_credits) == (0, 0)
    await asyncio.sleep(1.1)
    stored = engine.keys.account(idle).account
    assert await engine.redis.hget(stored, "g")  # still stored: only the sweep ends it now
    swept = await expire_all_async(engine)
    assert (swept.grants, swept.grant_credits, swept.holds) == (1, 50, 0)
    assert await engine.redis.hget(stored, "g") is None
    assert await engine.redis.zscore(index[0], idle) is None
    assert await engine.redis.zscore(index[1], kept) is not None  # not due: still indexed
    again = await expire_all_async(engine)
    assert (again.grants, again.grant_credits) == (0, 0)

    await flush_all(engine, ledger)
    expired = [(r["amount"], r["type"]) for r in await ledger_rows(ledger, [idle])
               if r["type"] == "expire"]  # fmt: skip
    assert expired == [(-50, "expire")]
    idle_now, kept_now = [await engine.get_account(a) for a in (idle, kept)]
    assert (idle_now.balance, [g.id for g in idle_now.grants]) == (1000, ["monthly"])
    assert short.grant_id not in {g.id for g in kept_now.grants}
    assert kept_now.balance == 1030
    await assert_books_balance(engine, ledger, [idle])  # no explicit grant left on it


def test_the_scheduled_job_expires_grants_and_reports_both_counts(
    redis_url: str,
    queue_url: str,
    key_prefix: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The RQ job itself, in a worker's runtime: its result and its log line count the
    grants it expired beside the holds it ended."""
    path = tmp_path / "config.toml"
    path.write_text(config_text(4))
    settings = Settings(
        redis_url=Secret(redis_url), queue_url=Secret(queue_url), config_path=str(path),
        key_prefix=key_prefix,
    )  # fmt: skip
    rt = runtime.install(settings)
    try:

        async def seed() -> None:
            engine = await rt.engine()
            await engine.initialize()
            await engine.upsert_account("idle", tier="pro")
            await engine.grant("idle", 70, expires_at=datetime.now(UTC) + timedelta(seconds=1))
            # Both due on one account: the hold sweep's script would expire the grant too.
            await engine.hold("idle", amount=5, ttl_seconds=1)

        rt.run(seed())
        time.sleep(1.1)
        with caplog.at_level(logging.INFO, logger="quotagate.jobs.expire"):
            result = expire_holds()
        assert result == {"holds": 1, "credits": 5, "captured": 0, "grants": 1,
                          "grant_credits": 70}  # fmt: skip
        assert "expired 1 grants (70 credits)" in caplog.text
        assert "ended 1 expired holds" in caplog.text
        assert expire_holds()["grants"] == 0
    finally:
        runtime.reset()
