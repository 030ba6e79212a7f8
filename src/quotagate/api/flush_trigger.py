"""The early flush: when a partition's outbox grows past a threshold between two scheduled
flushes, ask for one now.

Checking the outbox's length on every write would add a round trip to every charge, so the
gateway counts writes per partition in memory and looks at the length only every
``CHECK_EVERY`` writes to that partition, off the request's path (a background task).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from quotagate import metrics
from quotagate.engine import CreditEngine

log = logging.getLogger(__name__)

CHECK_EVERY = 200
"""Writes to one partition between two looks at its outbox length."""

Enqueue = Callable[[int], Awaitable[bool]]
"""Looks at a partition's outbox and enqueues its flush past the threshold; True if it did
(:class:`quotagate.jobs.trigger.EarlyFlush`)."""


class FlushTrigger:
    def __init__(self, engine: CreditEngine, enqueue: Enqueue | None = None) -> None:
        self.engine = engine
        self._enqueue = enqueue
        self._writes = [0] * engine.config.partitions
        self._busy: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def note_write(self, account_id: str) -> None:
        """Count one write; every CHECK_EVERY-th write to a partition starts a check."""
        p = self.engine.keys.partition_of(account_id)
        self._writes[p] += 1
        if self._writes[p] % CHECK_EVERY or p in self._busy or self._enqueue is None:
            return
        self._busy.add(p)
        task = asyncio.create_task(self._check(p))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, partition: int) -> None:
        try:
            assert self._enqueue is not None
            if await self._enqueue(partition):
                metrics.FLUSH_TRIGGERS.inc()
        except Exception as exc:
            log.debug("early flush of partition %s not enqueued: %s", partition, exc)
        finally:
            self._busy.discard(partition)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
