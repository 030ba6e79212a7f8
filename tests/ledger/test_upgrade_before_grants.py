"""The upgrade to grants, on data the version before them wrote (tests/upgrade/): Redis keys
(accounts with monthly and purchased credits, a debt, a ban, open holds, pending outbox
entries) and a ledger at that version's schema holding the part already flushed.

The documented step (docs/operations.md, "Upgrading") is `quotagate migrate`, then the new
gateways and workers: Redis needs no step, an account hash without a ``g`` field has no
explicit grants. Nothing may be lost: every balance, every pending entry, every hold.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
from tests.conftest import EngineFactory

from quotagate.config import load_config
from quotagate.engine import CreditEngine
from quotagate.engine.connection import redis_from_url
from quotagate.ledger import Ledger, upgrade
from quotagate.ledger.flush import flush_all
from quotagate.ledger.migrate import head_revision

LAYOUT = json.loads(
    (Path(__file__).parents[1] / "upgrade" / "layout_before_grants.json").read_text()
)
ACCOUNTS = ["u-monthly", "u-both", "u-holds", "u-debt", "u-banned"]


async def _load_redis(redis_url: str, prefix: str) -> None:
    r = redis_from_url(redis_url)
    try:
        await _write_keys(r, prefix)
    finally:
        await r.aclose()


def _written_at_ms() -> int:
    """When the layout was written: its newest outbox entry's time."""
    return max(
        int(entry_id.split("-")[0])
        for k in LAYOUT["keys"]
        if k["type"] == "stream"
        for entry_id, _ in k["value"]
    )


def _hold_deadlines_from_now(item: dict[str, Any], shift_ms: int) -> Any:
    """The value of a holds hash or hold-expiry zset with every deadline moved by
    ``shift_ms``: the layout's holds were open for a day when it was written, and must still
    be open when the test loads them, whenever that is."""
    key, value = item["key"], item["value"]
    if ":h:" in key:
        moved = {}
        for hold_id, fields in value.items():
            amount, expires, rest = fields.split("|", 2)
            moved[hold_id] = f"{amount}|{int(expires) + shift_ms}|{rest}"
        return moved
    if ":hz:" in key or key.endswith(":holdexp"):
        return [[member, score + shift_ms] for member, score in value]
    return value


async def _write_keys(r: Any, prefix: str) -> None:
    shift_ms = int(time.time() * 1000) - _written_at_ms()
    for item in LAYOUT["keys"]:
        key, kind = prefix + item["key"], item["type"]
        value = _hold_deadlines_from_now(item, shift_ms)
        if kind == "hash":
            await r.hset(key, mapping=value)
        elif kind == "zset":
            await r.zadd(key, {member: score for member, score in value})
        elif kind == "set":
            await r.sadd(key, *value)
        elif kind == "string":
            await r.set(key, value)
        elif kind == "stream":
            for entry_id, fields in value:
                await r.xadd(key, fields, id=entry_id)
        if item["pttl"] > 0:
            await r.pexpire(key, item["pttl"])


async def _load_ledger(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for table, rows in LAYOUT["tables"].items():
            await conn.execute(
                f"INSERT INTO {table} SELECT * FROM json_populate_recordset(NULL::{table}, $1)",
                json.dumps(rows),
            )
    finally:
        await conn.close()


def _before(account: str) -> dict[str, str]:
    suffix = f":a:{account}"
    return next(k["value"] for k in LAYOUT["keys"] if k["key"].endswith(suffix))


async def _pending(engine: CreditEngine) -> int:
    counts = [
        await engine.redis.xlen(engine.keys.outbox(p)) for p in range(engine.config.partitions)
    ]
    return sum(counts)


async def test_an_upgrade_keeps_every_balance_hold_and_pending_entry(
    make_engine: EngineFactory, redis_url: str, key_prefix: str, empty_database_url: str
) -> None:
    assert LAYOUT["revision"] == "0004"
    await asyncio.to_thread(upgrade, empty_database_url, LAYOUT["revision"])
    await _load_ledger(empty_database_url)
    await asyncio.to_thread(upgrade, empty_database_url)  # the documented step
    await _load_redis(redis_url, key_prefix)
    engine = await make_engine(load_config())  # a new gateway starts on the old keys
    ledger = await Ledger.connect(empty_database_url)
    try:
        assert await ledger.schema_revision() == head_revision()
        pending = sum(len(k["value"]) for k in LAYOUT["keys"] if k["type"] == "stream")
        assert pending and await _pending(engine) == pending
        flushed = len(LAYOUT["tables"]["credit_transactions"])

        # Every balance reads as it was, and the holds still hold.
        for account in ACCOUNTS:
            old = _before(account)
            state = await engine.get_account(account)
            assert state.balance == int(old["m"]) + int(old["b"]), account
            assert (state.monthly_credits, state.purchased_credits) == (
                int(old["m"]),
                int(old["b"]),
            )
            assert state.reserved == int(old["r"])
        assert (await engine.get_account("u-debt")).purchased_credits < 0

        # The pending entries flush with the new code: nothing lost, the books balance.
        await flush_all(engine, ledger)
        assert await _pending(engine) == 0
        await _assert_ledger_equals_redis(engine, ledger, flushed + pending)

        # The old accounts take grants, spend them, and their old holds end as holds do.
        grant = await engine.grant("u-both", 20, priority=0)
        await engine.consume("u-both", "ai_chat_message", 5)
        holds = (await engine.get_account("u-holds")).holds
        await engine.capture("u-holds", holds[0].hold_id, 1)
        await flush_all(engine, ledger)
        remaining = {g.id: g.remaining for g in (await engine.get_account("u-both")).grants}
        assert remaining[grant.grant_id] == 15
        await _assert_ledger_equals_redis(engine, ledger, flushed + pending + 3)
    finally:
        await ledger.aclose()


async def _assert_ledger_equals_redis(engine: CreditEngine, ledger: Ledger, rows: int) -> None:
    async with ledger.pool.acquire() as conn:
        count = await conn.fetchval(
            "SELECT count(*) FROM credit_transactions WHERE account_id = ANY($1::text[])", ACCOUNTS
        )
        sums: dict[str, Any] = {
            r["account_id"]: (r["credits"], r["rows"])
            for r in await conn.fetch(
                "SELECT u.account_id, u.credits, (SELECT COALESCE(SUM(amount), 0)"
                " FROM credit_transactions t WHERE t.account_id = u.account_id) AS rows"
                " FROM user_credits u WHERE u.account_id = ANY($1::text[])",
                ACCOUNTS,
            )
        }
    assert count == rows
    for account in ACCOUNTS:
        balance = (await engine.get_account(account)).balance
        assert sums[account] == (balance, balance), account
