"""Writes ``layout_before_grants.json``: run it with the version before grants (schema 0004),
``PYTHONPATH=<that checkout>/src python tests/upgrade/write_layout.py > layout_before_grants.json``.

It makes accounts with monthly and purchased credits, a debt, a ban and open holds, flushes
part of their history to a ledger at that version's schema, leaves the rest pending in the
outboxes, then dumps every Redis key and the ledger's rows as JSON. Not a test: the upgrade
test loads what it wrote."""

import asyncio
import json
import os
import sys
import uuid
from typing import Any

import asyncpg

from quotagate.config import load_config
from quotagate.engine import CreditEngine
from quotagate.ledger import Ledger, upgrade
from quotagate.ledger.flush import flush_all

PREFIX = "oldlayout"
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def main() -> None:
    db = f"qg_gen_{uuid.uuid4().hex[:8]}"
    c = await asyncpg.connect(ADMIN)
    await c.execute(f'CREATE DATABASE "{db}"')
    await c.close()
    url = f"postgresql://postgres@127.0.0.1:5432/{db}"
    await asyncio.to_thread(upgrade, url)
    cfg = load_config()
    e = CreditEngine.from_url(os.environ["QUOTAGATE_TEST_REDIS_URL"], cfg, prefix=PREFIX)
    await e.initialize()
    await e.mark_ready()
    res = next(iter(cfg.resources))
    await e.upsert_account("u-monthly", tier="pro")  # opening grant (monthly)
    await e.consume("u-monthly", res, 3)
    await e.upsert_account("u-both", tier="free")
    await e.credit("u-both", 250, "earn", description="top-up")
    await e.upsert_account("u-holds", tier="pro")
    await e.upsert_account("u-debt", tier="free", overdraft_limit=50)
    await e.upsert_account("u-banned", tier="free", status="banned")
    ledger = await Ledger.connect(url)
    await flush_all(e, ledger)  # the flushed part
    # pending: entries the ledger has not seen when the upgrade happens
    await e.consume("u-both", res, 2, idempotency_key="k-1")
    await e.consume("u-both", res, 1)
    h1 = await e.hold("u-holds", amount=40, ttl_seconds=86400)
    await e.hold("u-holds", resource=res, units=2, ttl_seconds=86400)
    await e.capture("u-holds", h1.hold_id, 30)
    await e.consume("u-debt", res, 120)
    await e.credit("u-monthly", 5, "adjust", description="goodwill")
    async with ledger.pool.acquire() as conn:
        tables = {}
        for t in ("user_credits", "credit_transactions", "outbox_flushes"):
            rows = await conn.fetch(f"SELECT row_to_json(x)::text AS j FROM {t} x")
            tables[t] = [json.loads(r["j"]) for r in rows]
        revision = await conn.fetchval("SELECT version_num FROM alembic_version")
    await ledger.aclose()
    dump: list[dict[str, Any]] = []
    async for raw_key in e.redis.scan_iter(f"{PREFIX}:*"):
        key = str(raw_key)
        kind = str(await e.redis.type(key))
        value: Any
        if kind == "hash":
            value = await e.redis.hgetall(key)
        elif kind == "zset":
            value = await e.redis.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = sorted(await e.redis.smembers(key))
        elif kind == "string":
            value = await e.redis.get(key)
        elif kind == "stream":
            value = await e.redis.xrange(key)
        else:
            raise SystemExit(f"unexpected {kind}")
        ttl = await e.redis.pttl(key)
        dump.append({"key": key[len(PREFIX) :], "type": kind, "value": value, "pttl": ttl})
        await e.redis.delete(key)
    dump.sort(key=lambda k: k["key"])
    json.dump({"revision": revision, "keys": dump, "tables": tables}, sys.stdout, indent=1)
    await e.aclose()
    c = await asyncpg.connect(ADMIN)
    await c.execute(f'DROP DATABASE "{db}"')
    await c.close()


if __name__ == "__main__":
    asyncio.run(main())
