"""Shadow charges in the ledger: the flush writes each partition's shadow stream into
``shadow_charges``, and the report sums that table per account and resource.

A shadow entry (``lua/shadow.lua``) is ``id a res u c dec av [d]``, its time the stream id's.
The flush inserts a batch in one statement (``ON CONFLICT DO NOTHING``: a batch written
before a crash, and read again, is not written twice), then deletes it from the stream. An
entry that does not read as a shadow entry is logged and dropped: it carries no money, and
must not stop the entries behind it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

import asyncpg

from quotagate.engine import CreditEngine
from quotagate.engine.results import SHADOW_DECISIONS
from quotagate.ledger.ledger import Ledger
from quotagate.ledger.outbox import stream_ms
from quotagate.ledger.postgres import in_transaction
from quotagate.metrics import SHADOW_ENTRIES_DROPPED

log = logging.getLogger(__name__)

_DECISIONS = frozenset(SHADOW_DECISIONS)

_INSERT = """
    INSERT INTO shadow_charges
        (id, account_id, resource, units, cost, decision, available, description, created_at)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                         $6::text[], $7::bigint[], $8::text[], $9::timestamptz[])
    ON CONFLICT (id) DO NOTHING
"""

Row = tuple[str, str, str, int, int, str, int, str | None, datetime]


def shadow_row(stream_id: str, f: dict[str, str]) -> Row:
    """The table row of one shadow entry; ValueError (or KeyError) when it is not one."""
    decision = f["dec"]
    if decision not in _DECISIONS:
        raise ValueError(f"unknown decision {decision!r}")
    text = (f["id"], f["a"], f["res"], f.get("d"))
    if any(t is not None and "\x00" in t for t in text):
        raise ValueError("text PostgreSQL cannot store (NUL)")
    created = datetime.fromtimestamp(stream_ms(stream_id) / 1000, UTC)
    return (
        f["id"], f["a"], f["res"], int(f["u"]), int(f["c"]), decision, int(f["av"]), f.get("d"),
        created,
    )  # fmt: skip


async def flush_shadow(
    engine: CreditEngine,
    ledger: Ledger,
    partition: int,
    *,
    batch_size: int,
    keep_going: Callable[[], Awaitable[bool]],
) -> int:
    """Write the partition's shadow stream to ``shadow_charges`` until it is empty (or
    ``keep_going`` says stop); the rows written. Raises BackendUnavailable when PostgreSQL
    fails: what was committed is deleted from the stream, the rest stays."""
    key = engine.keys.shadow(partition)
    written = 0
    while True:
        raw = cast(
            list[tuple[str, dict[str, str]]], await engine.redis.xrange(key, count=batch_size)
        )
        if not raw:
            return written
        rows = []
        for stream_id, fields in raw:
            try:
                rows.append(shadow_row(stream_id, fields))
            except (KeyError, ValueError) as exc:
                SHADOW_ENTRIES_DROPPED.inc()
                log.warning(
                    "shadow entry %s of partition %d dropped: %s", stream_id, partition, exc
                )
        if rows:
            written += await in_transaction(ledger.pool, partial(_insert, rows, partition))
        await engine.redis.xdel(key, *(stream_id for stream_id, _ in raw))
        if len(raw) < batch_size or not await keep_going():
            return written


async def _insert(rows: list[Row], partition: int, conn: asyncpg.Connection) -> int:
    """Insert the rows in one statement; should PostgreSQL refuse one of them, each in a
    savepoint of its own, dropping (and counting) those it refuses: the rows kept."""
    try:
        async with conn.transaction():
            await conn.execute(_INSERT, *(list(c) for c in zip(*rows, strict=True)))
        return len(rows)
    except asyncpg.DataError:
        pass
    kept = 0
    for row in rows:
        try:
            async with conn.transaction():
                await conn.execute(_INSERT, *([value] for value in row))
            kept += 1
        except asyncpg.DataError as exc:
            SHADOW_ENTRIES_DROPPED.inc()
            log.warning("shadow entry %s of partition %d dropped: %s", row[0], partition, exc)
    return kept


async def pending_shadow(engine: CreditEngine) -> int:
    """Shadow entries not yet in the ledger, over every partition."""
    async with engine.redis.pipeline(transaction=False) as pipe:
        for p in range(engine.config.partitions):
            pipe.xlen(engine.keys.shadow(p))
        return sum(int(n) for n in await pipe.execute())


@dataclass(frozen=True, slots=True)
class ShadowTotal:
    """What one account's shadow charges of one resource would have done."""

    account_id: str
    resource: str
    requests: int
    charged: int
    """Requests that would have been charged."""
    charged_credits: int
    denied: int
    """Requests that would have been refused (credits, rate limit, status or no account)."""
    denied_credits: int
    """What the refused requests would have cost."""
    denied_by: dict[str, int]
    """Refusals by reason (the decisions other than ``charged``)."""


_REPORT = """
    SELECT account_id, resource, decision, count(*) AS n, coalesce(sum(cost), 0) AS credits
    FROM shadow_charges
    WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR account_id = $3)
    GROUP BY account_id, resource, decision
    ORDER BY account_id, resource, decision
"""


async def shadow_report(
    ledger: Ledger, since: datetime, until: datetime, *, account_id: str | None = None
) -> list[ShadowTotal]:
    """Per account and resource, what the shadow charges in [since, until) would have charged
    and refused, ordered by account then resource."""

    async def read(conn: asyncpg.Connection) -> Sequence[asyncpg.Record]:
        return cast(Sequence[asyncpg.Record], await conn.fetch(_REPORT, since, until, account_id))

    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for r in await in_transaction(ledger.pool, read, readonly=True):
        t = totals.setdefault(
            (r["account_id"], r["resource"]),
            {"requests": 0, "charged": 0, "charged_credits": 0, "denied": 0,
             "denied_credits": 0, "denied_by": {}},
        )  # fmt: skip
        n, credits = int(r["n"]), int(r["credits"])
        t["requests"] += n
        if r["decision"] == "charged":
            t["charged"] += n
            t["charged_credits"] += credits
        else:
            t["denied"] += n
            t["denied_credits"] += credits
            t["denied_by"][r["decision"]] = n
    return [ShadowTotal(a, res, **t) for (a, res), t in totals.items()]


async def reset_shadow(engine: CreditEngine, account_id: str | None = None) -> int:
    """Clear shadow spends (one account's, or every account's), so that shadow balances start
    again from the accounts' real ones; the counters cleared."""
    if account_id is not None:
        return int(await engine.redis.delete(engine.keys.shadow_keys(account_id)[3]))
    cleared = 0
    async for key in engine.redis.scan_iter(match=engine.keys.shadow_spend_pattern, count=1000):
        cleared += int(await engine.redis.delete(key))
    return cleared
