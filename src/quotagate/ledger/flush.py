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
from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from quotagate.engine import CreditEngine
from quotagate.ledger.faults import pause_point
from quotagate.ledger.lease import FlushLease
from quotagate.ledger.ledger import Ledger
from quotagate.ledger.outbox import delete, read_batch

DEFAULT_BATCH_SIZE = 2000
"""Entries per batch: one XRANGE, one INSERT, one XDEL. Thousands of rows per statement is
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
    try:
        while await _one_batch(engine, ledger, partition, batch_size, result):
            spent = time.monotonic() - started
            if time_budget_seconds is not None and spent >= time_budget_seconds:
                break
            if not await lease.renew():
                break  # the lease lapsed: whoever holds it now carries on
    finally:
        with contextlib.suppress(RedisError):
            await lease.release()
        result.seconds = time.monotonic() - started
    return result


async def _one_batch(
    engine: CreditEngine, ledger: Ledger, partition: int, batch_size: int, result: FlushResult
) -> bool:
    """Flush one batch; True when a full batch was read (more may wait)."""
    entries = await read_batch(engine, partition, batch_size)
    result.drained = len(entries) < batch_size
    if not entries:
        return False
    applied = await ledger.apply_batch(
        entries, default_tier=engine.config.default_tier, partition=partition
    )
    await pause_point("after_commit")
    result.deleted += await delete(engine, partition, [e.stream_id for e in entries])
    result.batches += 1
    result.transactions += applied.transactions
    result.inserted += applied.inserted
    result.events += applied.events
    return len(entries) == batch_size


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
