"""Hold expiry: give back the credits of holds past their deadline, on idle accounts too.

The scripts release expired holds lazily whenever they touch an account; an account nobody
touches would keep its credits set aside. This sweep, scheduled every few seconds, reads each
partition's hold-expiry index (a sorted set scored by the earliest deadline) and releases
what is due, so an expired hold gives its credits back within one interval.
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


async def expire_all_async(
    engine: CreditEngine,
    *,
    partitions: list[int] | None = None,
    on_partition: Callable[[int, int, int], None] | None = None,
) -> ExpiryTally:
    """End every due hold of every partition (or the given ones) by its policy."""
    todo = list(range(engine.config.partitions)) if partitions is None else partitions
    gate = asyncio.Semaphore(PARALLEL_PARTITIONS)
    tally = ExpiryTally()

    async def one(p: int) -> None:
        async with gate:
            holds, credits, captured = await engine.expire_due_holds(p)
        tally.holds += holds
        tally.credits += credits
        tally.captured += captured
        if on_partition is not None:
            on_partition(p, holds, credits)

    await asyncio.gather(*(one(p) for p in todo))
    return tally


def expire_holds() -> dict[str, int]:
    """RQ job (scheduled every few seconds): release the holds past their deadline."""
    rt = runtime.current()

    async def work() -> ExpiryTally:
        return await expire_all_async(await rt.engine())

    tally = rt.run(work())
    if tally.holds:
        log.info(
            "ended %d expired holds (%d credits released, %d captured)",
            tally.holds, tally.credits, tally.captured,
        )  # fmt: skip
    return asdict(tally)
