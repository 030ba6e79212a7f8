"""Flush one partition's outbox into the ledger: read, apply, commit, and only then delete.

Reading: range reads from the head of the stream (XRANGE - + COUNT n). Flushed entries are
deleted, so the head is always the oldest entry not known to be flushed; the stream itself
is the cursor, and there is no consumer group to keep or repair. A worker that dies after
the commit and before the delete leaves its batch at the head: the next flush reads it
again, finds its rows in the ledger (the COPY fails on them; the checked path's ON CONFLICT
skips them), applies none of their balance changes again, and the entries go. The position
and time of each committed batch are also recorded in ``outbox_flushes`` in the same
transaction, for ``quotagate status``; nothing is skipped on the strength of it (after Redis
loses data and restarts, stream ids start again from the clock, and skipping by id could
lose entries).

Each batch goes the fast way (``apply.apply_rows``: one COPY into ``credit_transactions``
built straight from the stream reply, no per-entry Python objects) unless PostgreSQL finds
one of its rows in the ledger already, or refuses a value, or an entry does not parse: then
the transaction rolls back and the same batch is parsed entry by entry and applied with ON
CONFLICT, the checked path (``quarantine.apply_checked``). There an entry PostgreSQL cannot
store as it is, or that does not parse, is booked without its text when its money fields are
sound, and kept raw in ``ledger_quarantine``; the partition goes on past it.

One flush per partition at a time (``FlushLease``); partitions flush in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg
from redis.exceptions import RedisError

from quotagate import metrics
from quotagate.engine import CreditEngine
from quotagate.errors import OutboxEntryInvalid
from quotagate.ledger import quarantine
from quotagate.ledger.apply import Applied, apply_rows, record_flush
from quotagate.ledger.batch import FlushBatch, build_batch
from quotagate.ledger.faults import pause_point
from quotagate.ledger.lease import FlushLease
from quotagate.ledger.ledger import Ledger
from quotagate.ledger.outbox import StreamReader, trim_through
from quotagate.ledger.postgres import in_transaction
from quotagate.ledger.shadow import flush_shadow
from quotagate.settings import DEFAULT_FLUSH_BATCH_SIZE, DEFAULT_FLUSH_LEASE_SECONDS

DEFAULT_BATCH_SIZE = DEFAULT_FLUSH_BATCH_SIZE
"""Entries per batch, QUOTAGATE_FLUSH_BATCH's default: one COPY, one snapshot upsert, one
commit, one XTRIM (read in XRANGEs of ``outbox.READ_CHUNK``). The batch's snapshot rows stay
locked from its upsert to its commit."""

CHECKED_PATH_ERRORS = quarantine.REFUSED_ERRORS
"""What sends a batch from the fast path to the checked one: a row already in the ledger
(UniqueViolationError), or a value PostgreSQL refuses."""

DEFAULT_LEASE_SECONDS: float = DEFAULT_FLUSH_LEASE_SECONDS
"""How long a flush may hold its partition without renewing: QUOTAGATE_FLUSH_LEASE_SECONDS's
default."""

DEFAULT_TIME_BUDGET_SECONDS = 20.0
"""A queued flush job stops after this long and lets the next job go on, so one busy
partition cannot keep a worker from the others."""

WAIT_PARALLEL = 4
"""Partitions flushed at once by ``flush_all`` (the operator's ``quotagate flush``)."""


class _CollectorPause:
    """Python's cycle collector off while flushes run (counted: flush_all runs several).

    A batch is tens of thousands of lists (the stream reply) that live until it commits.
    Each time enough of them have outlived two young collections, the collector walks every
    object of the process, a large share of the flush's Python time (docs/ledger.md).
    A flush makes no garbage that reference counting does not free, and the collector is
    back on when the last flush ends.
    """

    def __init__(self) -> None:
        self.running = 0
        self.resume = False

    def __enter__(self) -> None:
        if self.running == 0:
            self.resume = gc.isenabled()
            gc.disable()
        self.running += 1

    def __exit__(self, *exc: object) -> None:
        self.running -= 1
        if self.running == 0 and self.resume:
            gc.enable()


_COLLECTOR_PAUSE = _CollectorPause()


@dataclass
class FlushResult:
    partition: int
    batches: int = 0
    transactions: int = 0
    inserted: int = 0
    events: int = 0
    deleted: int = 0
    quarantined: int = 0
    """Entries put in ``ledger_quarantine`` (see ``quotagate.ledger.quarantine``)."""
    shadow: int = 0
    """Shadow charges written to ``shadow_charges`` (see ``quotagate.ledger.shadow``)."""
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
        with _COLLECTOR_PAUSE:
            await _Batches(engine, ledger, partition, batch_size, result).run(keep_going)
            if await keep_going():
                result.shadow = await flush_shadow(
                    engine, ledger, partition, batch_size=batch_size, keep_going=keep_going
                )
    except Exception:
        # Counted here, where every flush passes (the job and `quotagate flush`): a batch
        # that did not commit, whatever the cause; the caller decides what happens next.
        metrics.LEDGER_FLUSH_ERRORS.labels("batch").inc()
        raise
    finally:
        with contextlib.suppress(RedisError):
            await lease.release()
        result.seconds = time.monotonic() - started
    return result


class _Batches:
    """The batches of one flush, overlapped: while batch n commits, batch n+1 is read and
    built, batch n-1 deleted and the lease renewed. Only reads run ahead; a batch is deleted
    only after its commit."""

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
        self.reader = StreamReader(engine)

    def _read(self, after: str | None) -> asyncio.Task[FlushBatch | None]:
        return asyncio.ensure_future(self._read_batch(after))

    async def _read_batch(self, after: str | None) -> FlushBatch | None:
        # Built in the read-ahead task: the Python work on batch n+1 runs while PostgreSQL
        # works on batch n.
        raw = await self.reader.read(self.partition, self.batch_size, after=after)
        if not raw:
            return None
        try:
            batch = build_batch(raw)
        except OutboxEntryInvalid:
            return FlushBatch(raw, raw[-1][0].decode(), readable=False)
        batch.copy_data(set())  # the usual case's COPY data, joined here rather than in the commit
        return batch

    async def run(self, keep_going: Callable[[], Awaitable[bool]]) -> None:
        reading = self._read(None)
        deleting: asyncio.Task[int] | None = None
        try:
            while True:
                batch = await reading
                self.result.drained = batch is None or len(batch.raw) < self.batch_size
                if batch is None:
                    break
                renewing: asyncio.Task[bool] | None = None
                if not self.result.drained:
                    reading = self._read(batch.last_stream_id)
                    # Renewed while the batch commits, off the critical path; whether to go
                    # on is decided once the batch is in.
                    renewing = asyncio.ensure_future(keep_going())
                try:
                    await self._commit(batch)
                    await pause_point("after_commit")
                    if deleting is not None:
                        self.result.deleted += await deleting
                except BaseException:
                    if renewing is not None:
                        renewing.cancel()
                    raise
                deleting = asyncio.ensure_future(
                    trim_through(self.engine, self.partition, batch.last_stream_id)
                )
                if renewing is None or not await renewing:
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

    async def _commit(self, batch: FlushBatch) -> None:
        applied = await apply_batch(
            self.ledger, batch, default_tier=self.engine.config.default_tier,
            partition=self.partition,
        )  # fmt: skip
        self.result.batches += 1
        self.result.transactions += applied.transactions
        self.result.inserted += applied.inserted
        self.result.events += applied.events
        self.result.quarantined += applied.quarantined
        # Alerts from what is now committed; never raises. Imported here: the alerts
        # modules build on this package.
        from quotagate.alerts.detect import after_batch

        await after_batch(self.engine.config, self.ledger, batch.raw)


async def apply_batch(
    ledger: Ledger, batch: FlushBatch, *, default_tier: str, partition: int
) -> Applied:
    """Apply one flush batch and record the partition's progress, in one transaction: the
    fast path, or the checked one when the fast one cannot take the batch (see the module
    docstring). Raises BackendUnavailable."""

    async def fast(conn: asyncpg.Connection) -> Applied:
        applied = await apply_rows(conn, batch, default_tier=default_tier)
        await record_flush(conn, partition, batch.last_stream_id, applied.inserted)
        await pause_point("before_commit")
        return applied

    async def checked(conn: asyncpg.Connection) -> quarantine.CheckedResult:
        result = await quarantine.apply_checked(
            conn, batch.raw, partition=partition, default_tier=default_tier
        )
        await record_flush(conn, partition, batch.last_stream_id, result.applied.inserted)
        await pause_point("before_commit")
        return result

    if batch.readable:
        try:
            return await in_transaction(ledger.pool, fast)
        except CHECKED_PATH_ERRORS:
            pass
    result = await in_transaction(ledger.pool, checked)
    quarantine.report(result.quarantined)
    return dataclasses.replace(result.applied, quarantined=len(result.quarantined))


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
