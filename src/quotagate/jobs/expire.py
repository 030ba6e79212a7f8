"""The expiry sweep: end holds past their deadline and grants past their expiry, on idle
accounts too.

The scripts release expired holds and expire grants lazily whenever they touch an account; an
account nobody touches would keep its credits set aside, and its expired grants would keep
counting in the ledger until its next charge. This sweep, scheduled every few seconds, reads
each partition's hold-expiry and grant-expiry indexes (sorted sets scored by the earliest
instant due) and ends what is due, so both happen within one interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

from quotagate.engine import CreditEngine
from quotagate.jobs import runtime

log = logging.getLogger(__name__)

PARALLEL_PARTITIONS = 8
"""Partitions swept at once; each sweep is a few small reads when nothing is due."""


@dataclass
class ExpiryTally:
    holds: int = 0
    """Holds ended."""
    credits: int = 0
    """Credits released (given back)."""
    captured: int = 0
    """Credits charged, by holds whose policy captures at the deadline."""
    grants: int = 0
    """Explicit grants expired."""
    grant_credits: int = 0
    """Credits those grants still held, which expired with them."""


async def expire_all_async(
    engine: CreditEngine,
    *,
    partitions: list[int] | None = None,
    on_partition: Callable[[int, int, int], None] | None = None,
) -> ExpiryTally:
    """End every due hold of every partition (or the given ones) by its policy, and expire
    every grant past its expiry. Grants go first: every account script, the hold sweep's too,
    expires an account's due grants before its own work, so a grant the hold sweep met first
    would expire uncounted here; the order changes nothing else."""
    todo = list(range(engine.config.partitions)) if partitions is None else partitions
    gate = asyncio.Semaphore(PARALLEL_PARTITIONS)
    tally = ExpiryTally()

    async def one(p: int) -> None:
        async with gate:
            grants, grant_credits = await engine.expire_due_grants(p)
            holds, credits, captured = await engine.expire_due_holds(p)
        tally.holds += holds
        tally.credits += credits
        tally.captured += captured
        tally.grants += grants
        tally.grant_credits += grant_credits
        if on_partition is not None:
            on_partition(p, holds, credits)

    await asyncio.gather(*(one(p) for p in todo))
    return tally


def expire_holds() -> dict[str, int]:
    """RQ job (scheduled every few seconds): end the holds past their deadline and expire the
    grants past their expiry; the tally is the job's result."""
    rt = runtime.current()

    async def work() -> ExpiryTally:
        return await expire_all_async(await rt.engine())

    tally = rt.run(work())
    if tally.holds:
        log.info(
            "ended %d expired holds (%d credits released, %d captured)",
            tally.holds, tally.credits, tally.captured,
        )  # fmt: skip
    if tally.grants:
        log.info("expired %d grants (%d credits)", tally.grants, tally.grant_credits)
    return asdict(tally)
