"""How fast the flush moves rows, against a bare COPY of the same rows into the same table.

    python -m quotagate.ledger.bench [--rows 50000] [--partitions 1] [--batch 2000]
                                     [--repeat 3] [--json]

uses QUOTAGATE_REDIS_URL and QUOTAGATE_DATABASE_URL (a migrated database: a scratch one is
best; every row the run writes is deleted afterwards). In one run:

1. ``rows`` spend entries go into ``partitions`` outboxes of a throwaway key prefix;
2. the flush moves them exactly as the worker does (XRANGE, COPY into credit_transactions,
   snapshot updates, commit, XTRIM, under the lease), one flush per partition in parallel:
   flush rows/s;
3. the rows are deleted and the same rows (already built as Python tuples, which is not
   timed) are COPYed (binary) into credit_transactions, with the same indexes, in one COPY on
   one connection and one transaction, nothing else: copy rows/s;
4. the same batches are applied by the checked path (``apply.apply_entries``: the
   write-through's, and the flush's when PostgreSQL refuses a batch) with each staging method
   (unnest arrays, COPY into a temporary table), PostgreSQL only: the measurement behind
   ``apply.COPY_MIN_ROWS``.

Steps 2-4 run ``repeat`` times, interleaved; each keeps its best time. ``measure_flush`` is
the function the benchmark harness calls.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from quotagate import ids
from quotagate.config import load_config
from quotagate.engine import CreditEngine
from quotagate.ledger.apply import Staging, transaction_columns
from quotagate.ledger.flush import DEFAULT_BATCH_SIZE, flush_all
from quotagate.ledger.ledger import Ledger
from quotagate.ledger.outbox import TransactionEntry
from quotagate.ledger.usage import DELETE_ACCOUNTS_ROWS_SQL

ACCOUNTS = 1000
COPY_COLUMNS = [
    "id", "account_id", "amount", "type", "resource", "units", "description", "metadata",
    "idempotency_key", "balance_after", "created_at",
]  # fmt: skip


@dataclass(frozen=True)
class FlushBench:
    rows: int
    partitions: int
    batch_size: int
    flush_seconds: float
    flush_rows_per_second: float
    copy_seconds: float
    copy_rows_per_second: float
    flush_to_copy: float
    """Flush rows/s divided by COPY rows/s."""
    apply_unnest_rows_per_second: float
    apply_copy_rows_per_second: float


def _entries(rows: int, accounts: list[str], partitions: int) -> list[list[TransactionEntry]]:
    rng = random.Random(rows)
    now_ms = int(time.time() * 1000)
    out: list[list[TransactionEntry]] = [[] for _ in range(partitions)]
    for i in range(rows):
        units = rng.randint(1, 9)
        meta = f'{{"request": {i}}}' if i % 10 == 0 else None
        out[i % partitions].append(
            TransactionEntry(
                stream_id="", id=ids.new_id(), account_id=rng.choice(accounts), amount=-units,
                type="spend", resource="api_call", units=units, description=None,
                metadata=meta, idempotency_key=None, balance_after=1000 - units,
                created_ms=now_ms + i // 100, monthly_delta=-units,
            )
        )  # fmt: skip
    return out


def _fields(e: TransactionEntry) -> dict[str, str]:
    """The entry as consume.lua writes a spend: no empty field, the time in the stream id."""
    fields = {"id": e.id, "a": e.account_id, "amt": str(e.amount), "t": e.type}
    if e.resource:
        fields.update(res=e.resource, u=str(e.units or 0))
    if e.metadata:
        fields["md"] = e.metadata
    fields["bal"] = str(e.balance_after)
    if e.monthly_delta:
        fields["dm"] = str(e.monthly_delta)
    return fields


async def _fill_outboxes(engine: CreditEngine, entries: list[list[TransactionEntry]]) -> None:
    for p, part in enumerate(entries):
        for i in range(0, len(part), 5000):
            async with engine.redis.pipeline(transaction=False) as pipe:
                for e in part[i : i + 5000]:
                    pipe.xadd(engine.keys.outbox(p), _fields(e))  # type: ignore[arg-type]
                await pipe.execute()


async def _delete_rows(conn: asyncpg.Connection, accounts: list[str]) -> None:
    # The ledger's rows only ever arrive, and a trigger sums them into the usage rollups:
    # the benchmark's rows leave those sums with them.
    await conn.execute(DELETE_ACCOUNTS_ROWS_SQL, accounts)
    await conn.execute("DELETE FROM user_credits WHERE account_id = ANY($1::text[])", accounts)
    await conn.execute("VACUUM (ANALYZE) credit_transactions")
    await conn.execute("VACUUM (ANALYZE) user_credits")


async def _bare_copy(conn: asyncpg.Connection, flat: Sequence[TransactionEntry]) -> float:
    records = [
        (e.id, e.account_id, e.amount, e.type, e.resource, e.units, e.description, e.metadata,
         e.idempotency_key, e.balance_after, datetime.fromtimestamp(e.created_ms / 1000, UTC))
        for e in flat
    ]  # fmt: skip
    started = time.perf_counter()
    await conn.copy_records_to_table("credit_transactions", records=records, columns=COPY_COLUMNS)
    return time.perf_counter() - started


async def _apply_only(
    ledger: Ledger, flat: Sequence[TransactionEntry], batch_size: int, staging: Staging
) -> float:
    transaction_columns(flat[:1])  # warm the code path, not the server
    started = time.perf_counter()
    for i in range(0, len(flat), batch_size):
        await ledger.apply_batch(flat[i : i + batch_size], default_tier="free", staging=staging)
    return time.perf_counter() - started


async def measure_flush(
    redis_url: str,
    database_url: str,
    *,
    rows: int = 50_000,
    partitions: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    repeat: int = 3,
) -> FlushBench:
    """Run the measurement (see the module docstring) ``repeat`` times, interleaved, and keep
    each method's best time (a shared machine only ever makes a run slower). Leaves nothing
    behind."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    engine = CreditEngine.from_url(redis_url, load_config(), prefix=prefix)
    ledger = await Ledger.connect(database_url, max_connections=max(2, partitions))
    accounts = [f"{prefix}-{i}" for i in range(ACCOUNTS)]
    entries = _entries(rows, accounts, partitions)
    best: dict[str, float] = {}
    saved: list[asyncpg.Record] = []
    try:
        await ledger.ensure_current()
        async with ledger.pool.acquire() as conn:
            saved = await conn.fetch(
                "SELECT * FROM outbox_flushes WHERE partition < $1", partitions
            )
        for _ in range(repeat):
            times = await _one_round(engine, ledger, accounts, entries, batch_size)
            best = {k: min(v, best.get(k, v)) for k, v in times.items()}
    finally:
        await _clean_up(engine, ledger, accounts, partitions, saved)
    return FlushBench(
        rows=rows,
        partitions=partitions,
        batch_size=batch_size,
        flush_seconds=round(best["flush"], 3),
        flush_rows_per_second=round(rows / best["flush"]),
        copy_seconds=round(best["copy"], 3),
        copy_rows_per_second=round(rows / best["copy"]),
        flush_to_copy=round(best["copy"] / best["flush"], 3),
        apply_unnest_rows_per_second=round(rows / best["unnest"]),
        apply_copy_rows_per_second=round(rows / best["copy_stage"]),
    )


async def _one_round(
    engine: CreditEngine,
    ledger: Ledger,
    accounts: list[str],
    entries: list[list[TransactionEntry]],
    batch_size: int,
) -> dict[str, float]:
    """One measurement of each method, each on an empty slate. Seconds per method."""
    flat = [e for part in entries for e in part]
    await _fill_outboxes(engine, entries)
    started = time.perf_counter()
    await flush_all(
        engine, ledger, partitions=range(len(entries)), batch_size=batch_size,
        parallel=len(entries),
    )  # fmt: skip
    times = {"flush": time.perf_counter() - started}
    async with ledger.pool.acquire() as conn:
        await _delete_rows(conn, accounts)
        times["copy"] = await _bare_copy(conn, flat)
        await _delete_rows(conn, accounts)
    times["unnest"] = await _apply_only(ledger, flat, batch_size, "unnest")
    async with ledger.pool.acquire() as conn:
        await _delete_rows(conn, accounts)
    times["copy_stage"] = await _apply_only(ledger, flat, batch_size, "copy")
    async with ledger.pool.acquire() as conn:
        await _delete_rows(conn, accounts)
    return times


async def _clean_up(
    engine: CreditEngine,
    ledger: Ledger,
    accounts: list[str],
    partitions: int,
    saved: list[asyncpg.Record],
) -> None:
    try:
        async with ledger.pool.acquire() as conn:
            await _delete_rows(conn, accounts)
            await conn.execute("DELETE FROM outbox_flushes WHERE partition < $1", partitions)
            if saved:
                columns = list(saved[0].keys())
                records = [tuple(r) for r in saved]
                await conn.copy_records_to_table("outbox_flushes", records=records, columns=columns)
        await engine.redis.delete(*(engine.keys.outbox(p) for p in range(partitions)))
    finally:
        await ledger.aclose()
        await engine.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    from quotagate.bench.report import run_measurement

    async def measure(redis_url: str, database_url: str, batch: int, **options: int) -> FlushBench:
        return await measure_flush(redis_url, database_url, batch_size=batch, **options)

    run_measurement(
        "python -m quotagate.ledger.bench",
        {"rows": 50_000, "partitions": 1, "batch": DEFAULT_BATCH_SIZE, "repeat": 3},
        measure, argv,
    )  # fmt: skip


if __name__ == "__main__":
    main()
