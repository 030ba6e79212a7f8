"""Monthly renewal: every active account gets its tier's policy applied once per period.

The engine's ``renew`` script does the atomic part for one account (policy ``add`` capped at
the tier's credit limit, or ``reset`` with an ``expire`` transaction) and stamps the account
with the period, so running a partition twice, or again after a worker died half-way,
renews each account once. This module fans the work out: one RQ job per partition, each
walking its partition with SCAN and sending the renewals in chunks that the engine
pipelines. A spend racing with a renewal is safe: both are scripts on the same key.

A partition whose pass completed is marked with the period (``P:{n}:renewed``), so the
daily scheduled run costs one GET per partition once the month's renewal is done; a
scheduler that was down on the 1st catches up the next day.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

from quotagate.engine import CreditEngine, current_period
from quotagate.engine.results import RenewResult
from quotagate.errors import AccountNotFound, UnknownTier, ValidationError
from quotagate.jobs import runtime
from quotagate.jobs.enqueue import enqueue_renewals
from quotagate.jobs.scan import account_batches

log = logging.getLogger(__name__)

RENEW_CHUNK = 500
"""Accounts handed to one gather: bounds the memory of a pass whatever the partition's size."""

RENEW_IN_FLIGHT = 500
"""Renewals in flight at once. Each is one script call; the engine sends the calls of a loop
tick in one pipeline on one connection, so this bounds memory and batch size, not the pool."""

PARALLEL_PARTITIONS = 4
"""Partitions renewed at once when a command runs the renewal in place (no workers)."""


@dataclass
class RenewTally:
    """What one renewal pass did."""

    renewed: int = 0
    already_renewed: int = 0
    banned: int = 0
    granted: int = 0
    expired: int = 0
    skipped: int = 0
    """Accounts gone since the scan, or whose tier is no longer in the config (logged)."""

    def add(self, other: RenewTally) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    @property
    def accounts(self) -> int:
        return self.renewed + self.already_renewed + self.banned + self.skipped


def renewed_marker(engine: CreditEngine, partition: int) -> str:
    """Key holding the last period whose renewal pass over the partition completed."""
    return engine.keys.renewed(partition)


async def renew_accounts(
    engine: CreditEngine,
    account_ids: list[str],
    period: str,
    gate: asyncio.Semaphore | None = None,
) -> RenewTally:
    """Renew a chunk of accounts concurrently; the engine pipelines the script calls.

    ``gate`` bounds the renewals in flight across every chunk that shares it.
    """
    tally = RenewTally()
    gate = gate or asyncio.Semaphore(RENEW_IN_FLIGHT)

    async def one(account_id: str) -> RenewResult:
        async with gate:
            return await engine.renew(account_id, period)

    results = await asyncio.gather(*(one(a) for a in account_ids), return_exceptions=True)
    for account_id, result in zip(account_ids, results, strict=True):
        if isinstance(result, AccountNotFound | UnknownTier):
            log.warning("renewal skipped %s: %s", account_id, result)
            tally.skipped += 1
        elif isinstance(result, BaseException):
            raise result
        elif result.renewed:
            tally.renewed += 1
            tally.granted += result.granted
            tally.expired += result.expired
        elif result.reason == "banned":
            tally.banned += 1
        else:
            tally.already_renewed += 1
    return tally


async def renew_partition_async(
    engine: CreditEngine,
    partition: int,
    period: str,
    *,
    chunk: int = RENEW_CHUNK,
    on_chunk: Callable[[RenewTally], None] | None = None,
    gate: asyncio.Semaphore | None = None,
) -> RenewTally:
    """One pass over the partition; marks it renewed for ``period`` when it completes."""
    tally = RenewTally()
    gate = gate or asyncio.Semaphore(RENEW_IN_FLIGHT)
    async for batch in account_batches(engine, partition):
        for i in range(0, len(batch), chunk):
            done = await renew_accounts(engine, batch[i : i + chunk], period, gate)
            tally.add(done)
            if on_chunk is not None:
                on_chunk(done)
    await engine.redis.set(renewed_marker(engine, partition), period)
    return tally


async def partitions_to_renew(engine: CreditEngine, period: str) -> list[int]:
    """Partitions whose pass for ``period`` has not completed yet."""
    async with engine.redis.pipeline(transaction=False) as pipe:
        for p in range(engine.config.partitions):
            pipe.get(renewed_marker(engine, p))
        marks = await pipe.execute()
    return [p for p, mark in enumerate(marks) if mark != period]


async def renew_all_async(
    engine: CreditEngine,
    period: str,
    *,
    partitions: list[int] | None = None,
    on_partition: Callable[[int, RenewTally], None] | None = None,
    on_chunk: Callable[[RenewTally], None] | None = None,
) -> RenewTally:
    """Renew every partition in this process, a few at a time (the command without workers)."""
    todo = list(range(engine.config.partitions)) if partitions is None else partitions
    partition_gate = asyncio.Semaphore(PARALLEL_PARTITIONS)
    call_gate = asyncio.Semaphore(RENEW_IN_FLIGHT)
    total = RenewTally()

    async def one(p: int) -> None:
        async with partition_gate:
            done = await renew_partition_async(engine, p, period, on_chunk=on_chunk, gate=call_gate)
        total.add(done)
        if on_partition is not None:
            on_partition(p, done)

    await asyncio.gather(*(one(p) for p in todo))
    return total


def check_period(period: str) -> str:
    """A "YYYY-MM" period, or a ValidationError naming the mistake."""
    ok = len(period) == 7 and period[4] == "-" and period[:4].isdigit() and period[5:].isdigit()
    if not ok or not 1 <= int(period[5:]) <= 12:
        raise ValidationError(f"period must be YYYY-MM, not {period!r}", field="period")
    return period


# -- RQ jobs ----------------------------------------------------------------------------------


def renew_partition(partition: int, period: str) -> dict[str, int]:
    """RQ job: renew one partition for ``period``. Safe to run again (each account once)."""
    check_period(period)
    rt = runtime.current()

    async def work() -> RenewTally:
        return await renew_partition_async(await rt.engine(), partition, period)

    tally = rt.run(work())
    log.info("renewal %s partition %d: %s", period, partition, tally)
    return asdict(tally)


def renew_all(period: str | None = None) -> list[str]:
    """RQ job (scheduled daily): enqueue a renewal job per partition not yet done this period."""
    period = check_period(period or current_period())
    rt = runtime.current()

    async def work() -> list[int]:
        return await partitions_to_renew(await rt.engine(), period)

    return enqueue_renewals(rt.run(work()), period, rt.settings)
