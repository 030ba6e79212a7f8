"""Flush one partition's outbox into the ledger: read, apply, commit, and only then delete.

Reading: range reads from the head of the stream (XRANGE - + COUNT n). Flushed entries are
deleted, so the head is always the oldest entry not known to be flushed; the stream itself
is the cursor, and there is no consumer group to keep or repair. A worker that dies after
the commit and before the delete leaves its batch at the head: the next flush reads it
again, ON CONFLICT skips its rows, their balance changes are not applied again, and the
entries go. The position and time of each committed batch are also recorded in
``outbox_flushes`` in the same transaction, for ``quotagate status``; nothing is skipped on
the strength of it (after Redis loses data and restarts, stream ids start again from the
clock, and skipping by id could lose entries).

One flush per partition at a time (``FlushLease``); partitions flush in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from quotagate.engine import CreditEngine
from quotagate.ledger.faults import pause_point
from quotagate.ledger.lease import FlushLease
from quotagate.ledger.ledger import Ledger
from quotagate.ledger.outbox import Entry, read_batch, trim_through

DEFAULT_BATCH_SIZE = 2000
"""Entries per batch: one XRANGE, one COPY and INSERT, one XTRIM. Thousands of rows per statement is
where PostgreSQL's per-statement cost stops mattering (see the README's measurements)."""

DEFAULT_LEASE_SECONDS = 15.0
"""How long a flush may hold its partition without renewing (it renews every batch). After a
worker dies, its partition waits at most this long for another flush."""

DEFAULT_TIME_BUDGET_SECONDS = 20.0
"""A queued flush job stops after this long and lets the next job go on, so one busy
partition cannot keep a worker from the others."""

WAIT_PARALLEL = 4
"""Partitions flushed at once by ``flush_all`` (the operator's ``quotagate flush``)."""


@dataclass
class FlushResult:
    partition: int
    batches: int = 0
    transactions: int = 0
    inserted: int = 0
    events: int = 0
    deleted: int = 0
    busy: bool = False
    """Another flush held the partition's lease: this one did nothing."""
    drained: bool = False
    """The last read found fewer entries than a batch: the outbox was empty then."""
    seconds: float = 0.0

    @property
    def duplicates(self) -> int:
        """Transactions that were in the ledger already (written through, or a re-run)."""
        return self.transactions - self.inserted


async def flush_partition(
    engine: CreditEngine,
    ledger: Ledger,
    partition: int,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    time_budget_seconds: float | None = DEFAULT_TIME_BUDGET_SECONDS,
    wait_seconds: float = 0.0,
) -> FlushResult:
    """Flush ``partition`` until its outbox is empty (or the time budget is spent).

    Raises BackendUnavailable when PostgreSQL fails: what was committed is deleted from the
    outbox, the rest stays for the next flush.
    """
    started = time.monotonic()
    result = FlushResult(partition)
    lease = await FlushLease.wait(engine, partition, lease_seconds, wait_seconds)
    if lease is None:
        result.busy = True
        return result
    budget_end = None if time_budget_seconds is None else started + time_budget_seconds

    async def keep_going() -> bool:
        if budget_end is not None and time.monotonic() >= budget_end:
            return False
        return await lease.renew()  # False: the lease lapsed, whoever holds it carries on

    try:
        await _Batches(engine, ledger, partition, batch_size, result).run(keep_going)
    finally:
        with contextlib.suppress(RedisError):
            await lease.release()
        result.seconds = time.monotonic() - started
    return result


class _Batches:
    """The batches of one flush, overlapped: while batch n commits, batch n+1 is read and
    batch n-1 deleted. Only reads run ahead; a batch is deleted only after its commit."""

    def __init__(
        self,
        engine: CreditEngine,
        ledger: Ledger,
        partition: int,
        batch_size: int,
        result: FlushResult,
    ) -> None:
        self.engine, self.ledger, self.partition = engine, ledger, partition
        self.batch_size, self.result = batch_size, result

    def _read(self, after: str | None) -> asyncio.Task[list[Entry]]:
        read = read_batch(self.engine, self.partition, self.batch_size, after=after)
        return asyncio.ensure_future(read)

    async def run(self, keep_going: Callable[[], Awaitable[bool]]) -> None:
        reading = self._read(None)
        deleting: asyncio.Task[int] | None = None
        try:
            while True:
                entries = await reading
                self.result.drained = len(entries) < self.batch_size
                if not self.result.drained:
                    reading = self._read(entries[-1].stream_id)
                if entries:
                    await self._commit(entries)
                    await pause_point("after_commit")
                    if deleting is not None:
                        self.result.deleted += await deleting
                    last = entries[-1].stream_id
                    deleting = asyncio.ensure_future(
                        trim_through(self.engine, self.partition, last)
                    )
                if self.result.drained or not await keep_going():
                    break
        except BaseException:
            reading.cancel()
            if deleting is not None:  # that batch is committed: finish removing it
                with contextlib.suppress(Exception):
                    await deleting
            raise
        reading.cancel()  # a read-ahead the budget or the lease cut short
        if deleting is not None:
            self.result.deleted += await deleting

    async def _commit(self, entries: list[Entry]) -> None:
        applied = await self.ledger.apply_batch(
            entries, default_tier=self.engine.config.default_tier, partition=self.partition
        )
        self.result.batches += 1
        self.result.transactions += applied.transactions
        self.result.inserted += applied.inserted
        self.result.events += applied.events


async def flush_all(
    engine: CreditEngine,
    ledger: Ledger,
    *,
    partitions: Sequence[int] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    parallel: int = WAIT_PARALLEL,
) -> list[FlushResult]:
    """Flush every partition now, waiting for running flushes to finish first.

    For operators and tests (``quotagate flush``): no time budget, and a partition whose
    lease is held (a worker flushing it, or one that died) is waited for, up to the lease
    length, then flushed here.
    """
    chosen = list(range(engine.config.partitions)) if partitions is None else list(partitions)
    gate = asyncio.Semaphore(parallel)

    async def one(p: int) -> FlushResult:
        async with gate:
            return await flush_partition(
                engine, ledger, p, batch_size=batch_size, lease_seconds=lease_seconds,
                time_budget_seconds=None, wait_seconds=lease_seconds + 1,
            )  # fmt: skip

    return list(await asyncio.gather(*(one(p) for p in chosen)))
