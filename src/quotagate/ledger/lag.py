"""How far the ledger is behind Redis: entries waiting in each outbox, and the oldest's age.

Read from Redis alone (one pipeline), so the readiness endpoint and the metrics can show it
while PostgreSQL is down. Ages use Redis's clock on both sides: the stream id's millisecond
part is when Redis appended the entry, and ``TIME`` is now.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from quotagate.engine import CreditEngine
from quotagate.ledger.outbox import stream_ms


@dataclass(frozen=True, slots=True)
class PartitionLag:
    partition: int
    entries: int
    oldest_age_seconds: float | None
    """None when the outbox is empty."""


@dataclass(frozen=True, slots=True)
class OutboxLag:
    total: int
    """Entries waiting in all outboxes (including some already written through)."""
    oldest_age_seconds: float | None
    """Age of the oldest waiting entry, over all partitions; None when nothing waits."""
    partitions: tuple[PartitionLag, ...]


async def outbox_lag(engine: CreditEngine) -> OutboxLag:
    """The lag of every partition: the server's time, then one pipeline (on a cluster, one
    per master; TIME names no key, so it cannot go inside a cluster's pipeline)."""
    n = engine.config.partitions
    sec, usec = await engine.redis.time()
    async with engine.redis.pipeline(transaction=False) as pipe:
        for p in range(n):
            key = engine.keys.outbox(p)
            pipe.xlen(key)
            pipe.xrange(key, "-", "+", count=1)
        replies: list[Any] = await pipe.execute()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    parts = []
    for p in range(n):
        length = int(replies[2 * p])
        first = cast(list[tuple[str, dict[str, str]]], replies[1 + 2 * p])
        age = max(0.0, (now_ms - stream_ms(first[0][0])) / 1000) if first else None
        parts.append(PartitionLag(p, length, age))
    ages = [lag.oldest_age_seconds for lag in parts if lag.oldest_age_seconds is not None]
    return OutboxLag(
        total=sum(lag.entries for lag in parts),
        oldest_age_seconds=max(ages) if ages else None,
        partitions=tuple(parts),
    )
