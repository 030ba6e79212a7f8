"""Readings of the books: Redis balances, the outbox entries, the Postgres snapshot and rows.

The books balance when, for every account::

    Redis balance  = snapshot + effect of the outbox entries not yet in the ledger
    snapshot       = sum of the account's ledger rows

The Redis side is read atomically per batch (the balances and the newest outbox id in one
MULTI: one slot, so it also runs on a cluster). The outbox is read once, incrementally, up
to that id; an entry trimmed before we read it was committed to Postgres first, so it is in
the snapshot and, like every entry found in ``credit_transactions``, counts as flushed.
The Postgres side is one REPEATABLE READ transaction per batch (``Ledger.read_books``). A
flush that commits between the two readings can make a balanced account look off:
:mod:`quotagate.jobs.reconcile` reads such an account again before it calls it drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from quotagate.engine import CreditEngine
from quotagate.ledger.outbox import RawEntries

OUTBOX_PAGE = 5000
"""Outbox entries read per XRANGE call."""


@dataclass(frozen=True)
class RedisReading:
    balances: dict[str, int | None]
    """Account -> monthly + purchased credits; None when Redis has no such account."""
    last_entry: str
    """Stream id of the newest outbox entry when the balances were read ("" if none)."""


@dataclass
class OutboxIndex:
    """The transaction entries of one partition's outbox, read up to a given stream id."""

    engine: CreditEngine
    partition: int
    read_to: str = ""
    entries: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    """Account -> [(transaction id, signed amount)] in stream order."""

    async def extend_to(self, last_entry: str) -> None:
        stream = self.engine.keys.outbox(self.partition)
        while last_entry and (not self.read_to or _stream_lt(self.read_to, last_entry)):
            start = f"({self.read_to}" if self.read_to else "-"
            page = cast(
                RawEntries,
                await self.engine.redis.xrange(stream, start, last_entry, count=OUTBOX_PAGE),
            )
            if not page:
                self.read_to = last_entry
                return
            for _, f in page:
                if f.get("t") != "account" and "amt" in f:
                    self.entries.setdefault(f["a"], []).append((f["id"], int(f["amt"])))
            self.read_to = page[-1][0]

    def of(self, account_id: str) -> list[tuple[str, int]]:
        return self.entries.get(account_id, [])


def _stream_lt(a: str, b: str) -> bool:
    ams, aseq = a.split("-")
    bms, bseq = b.split("-")
    return (int(ams), int(aseq)) < (int(bms), int(bseq))


async def read_redis(engine: CreditEngine, partition: int, account_ids: list[str]) -> RedisReading:
    """Balances of some accounts of one partition and the outbox's newest id, atomically."""
    async with engine.redis.pipeline(transaction=True) as pipe:
        for a in account_ids:
            pipe.hmget(engine.keys.account(a).account, "m", "b")
        pipe.xrevrange(engine.keys.outbox(partition), "+", "-", count=1)
        *rows, newest = await pipe.execute()
    balances: dict[str, int | None] = {
        a: None if m is None else int(m) + int(b)
        for a, (m, b) in zip(account_ids, rows, strict=True)
    }
    return RedisReading(balances, newest[0][0] if newest else "")
