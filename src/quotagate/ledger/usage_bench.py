"""How fast usage queries answer on a large ledger, and what the rollup costs the inserts.

    python -m quotagate.ledger.usage_bench [--rows 10000000] [--accounts 10000]
                                           [--repeat 20] [--json]

uses QUOTAGATE_DATABASE_URL's server (a database of its own is created, migrated, and dropped
at the end) and QUOTAGATE_REDIS_URL (a throwaway key prefix, whose outboxes are empty: the
queries' Redis part is one empty XRANGE per partition read). In one run:

1. ``rows`` transactions over 30 days go into ``credit_transactions`` by INSERT ... SELECT in
   statements of ``CHUNK_ROWS`` (a flush batch is 10,000): one account in ten is the busy one
   (a tenth of all rows), the rest spread over ``accounts``; four resources; one row in fifty
   a grant. The trigger keeps ``usage_hourly`` as it does for the flush. The first
   ``COMPARE_ROWS`` rows also go, in the same statements, into a copy of the table without
   the trigger: the rollup's share of the insert time.
2. The queries, each ``repeat`` times (median and worst, in milliseconds): the busy account's
   month by day and by hour (``account_usage``, the API's path), the same month by day
   straight from ``credit_transactions`` (what the rollup saves), every account by account
   for the last day and by resource for the month (``all_usage``).
3. The rollup is checked against the ledger: the same sums, or the run fails.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from quotagate.config import load_config
from quotagate.engine import CreditEngine
from quotagate.ledger.ledger import Ledger
from quotagate.ledger.migrate import upgrade
from quotagate.ledger.urls import asyncpg_dsn
from quotagate.ledger.usage import UsageRange, account_usage, all_usage

CHUNK_ROWS = 100_000
COMPARE_ROWS = 1_000_000
SPAN = timedelta(days=30)
END = datetime(2026, 12, 1, tzinfo=UTC)
BUSY = "busy"

_ROWS_SQL = """
SELECT 'bench-' || g, CASE WHEN g % 10 = 0 THEN 'busy' ELSE 'acct-' || (g % $3) END,
       CASE WHEN g % 50 = 1 THEN 100 ELSE -(1 + g % 3) END,
       CASE WHEN g % 50 = 1 THEN 'grant' ELSE 'spend' END,
       CASE WHEN g % 50 = 1 THEN NULL ELSE (ARRAY['api_call', 'ai_chat_message',
            'file_upload', 'premium_feature'])[1 + g % 4] END,
       CASE WHEN g % 50 = 1 THEN NULL ELSE 1 + g % 3 END,
       0, $4::timestamptz + (g::float8 / $5) * $6::interval
FROM generate_series($1::bigint, $2::bigint) AS g
"""
_COLUMNS = "(id, account_id, amount, type, resource, units, balance_after, created_at)"

_DIRECT_SQL = """
SELECT date_trunc('day', created_at, 'UTC') AS day, resource, type, sum(amount), sum(units),
       count(*)
FROM credit_transactions
WHERE account_id = $1 AND created_at >= $2 AND created_at < $3
GROUP BY 1, 2, 3
"""
_CHECK_SQL = """
SELECT (SELECT sum(amount) FROM credit_transactions) = (SELECT sum(amount) FROM usage_hourly)
   AND (SELECT count(*) FROM credit_transactions) = (SELECT sum(transactions) FROM usage_hourly)
   AND (SELECT sum(amount) FROM credit_transactions)
       = (SELECT sum(amount) FROM usage_hourly_totals)
   AND (SELECT count(*) FROM credit_transactions)
       = (SELECT sum(transactions) FROM usage_hourly_totals)
"""


@dataclass
class UsageBench:
    rows: int
    accounts: int
    rollup_rows: int
    insert_seconds: float
    compare_rows: int
    compare_with_rollup_seconds: float
    compare_without_rollup_seconds: float
    queries_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per query: median and max over the repeats."""


def _database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _fill(conn: asyncpg.Connection, rows: int, accounts: int, bench: UsageBench) -> None:
    await conn.execute("CREATE TABLE plain_transactions (LIKE credit_transactions INCLUDING ALL)")
    start = END - SPAN
    for low in range(1, rows + 1, CHUNK_ROWS):
        high = min(rows, low + CHUNK_ROWS - 1)
        args = (low, high, accounts - 1, start, rows, SPAN)
        began = time.perf_counter()
        await conn.execute(f"INSERT INTO credit_transactions {_COLUMNS} {_ROWS_SQL}", *args)
        took = time.perf_counter() - began
        bench.insert_seconds += took
        if high <= COMPARE_ROWS:
            bench.compare_rows = high
            bench.compare_with_rollup_seconds += took
            began = time.perf_counter()
            await conn.execute(f"INSERT INTO plain_transactions {_COLUMNS} {_ROWS_SQL}", *args)
            bench.compare_without_rollup_seconds += time.perf_counter() - began
    await conn.execute("DROP TABLE plain_transactions")
    await conn.execute("VACUUM (ANALYZE) credit_transactions")
    await conn.execute("VACUUM (ANALYZE) usage_hourly")
    await conn.execute("VACUUM (ANALYZE) usage_hourly_totals")
    bench.rollup_rows = await conn.fetchval("SELECT count(*) FROM usage_hourly")


async def _timed(work: Callable[[], Awaitable[object]], repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        await work()
        times.append((time.perf_counter() - began) * 1000)
    return {"median": round(statistics.median(times), 2), "max": round(max(times), 2)}


async def _queries(
    engine: CreditEngine, ledger: Ledger, repeat: int
) -> dict[str, dict[str, float]]:
    month = UsageRange.parse((END - SPAN).isoformat(), END.isoformat(), "day")
    hours = UsageRange.parse((END - SPAN).isoformat(), END.isoformat(), "hour")
    last_day = UsageRange.parse((END - timedelta(days=1)).isoformat(), END.isoformat(), "day")

    async def direct() -> object:
        async with ledger.pool.acquire() as conn:
            return await conn.fetch(_DIRECT_SQL, BUSY, month.start, month.end)

    return {
        "busy_account_month_by_day": await _timed(
            lambda: account_usage(engine, ledger, BUSY, month), repeat
        ),
        "busy_account_month_by_hour": await _timed(
            lambda: account_usage(engine, ledger, BUSY, hours), repeat
        ),
        "busy_account_month_by_day_from_ledger_rows": await _timed(direct, max(3, repeat // 5)),
        "all_accounts_last_day_top_10": await _timed(
            lambda: all_usage(engine, ledger, last_day, group_by="account", limit=10), repeat
        ),
        "all_accounts_month_by_resource": await _timed(
            lambda: all_usage(engine, ledger, month, group_by="resource"), repeat
        ),
    }


async def measure_usage(
    redis_url: str, database_url: str, *, rows: int, accounts: int, repeat: int
) -> UsageBench:
    name = f"qg_usage_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _database(database_url, name)
    engine = CreditEngine.from_url(redis_url, load_config(), prefix=f"usagebench{name[-8:]}")
    try:
        await asyncio.to_thread(upgrade, url)
        bench = UsageBench(rows, accounts, 0, 0.0, 0, 0.0, 0.0)
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await _fill(conn, rows, accounts, bench)
            assert await conn.fetchval(_CHECK_SQL), "usage_hourly differs from the ledger"
        finally:
            await conn.close()
        ledger = await Ledger.connect(url, max_connections=2)
        try:
            bench.queries_ms = await _queries(engine, ledger, repeat)
        finally:
            await ledger.aclose()
        return bench
    finally:
        await engine.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main(argv: Sequence[str] | None = None) -> None:
    from quotagate.bench.report import run_measurement

    run_measurement(
        "python -m quotagate.ledger.usage_bench",
        {"rows": 10_000_000, "accounts": 10_000, "repeat": 20}, measure_usage, argv,
    )  # fmt: skip


if __name__ == "__main__":
    main()
