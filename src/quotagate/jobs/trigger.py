"""The gateway's early flush: when a partition's outbox passes a threshold, flush it now.

The schedule flushes every partition about every second; under a burst an outbox can grow
faster than that. The gateway counts its writes per partition and, every so many writes,
calls an :class:`EarlyFlush` with the partition (off the request's path). That reads the
outbox's length (one XLEN) and, past the threshold, enqueues the partition's flush through
the same queued flag as the schedule, so a flush already queued (or backing off while
PostgreSQL is down) is not queued again. RQ is synchronous: the enqueue runs in a thread.
"""

from __future__ import annotations

import asyncio

from rq import Queue

from quotagate.engine import CreditEngine
from quotagate.jobs import queues
from quotagate.jobs.flush import enqueue_flush
from quotagate.settings import Settings


class EarlyFlush:
    """``await early_flush(partition)``: True when it enqueued that partition's flush."""

    def __init__(self, engine: CreditEngine, queue: Queue, prefix: str, threshold: int) -> None:
        self.engine = engine
        self.queue = queue
        self.prefix = prefix
        self.threshold = threshold
        self.enqueued = 0
        """Flushes enqueued so far (for metrics and tests)."""

    @classmethod
    def from_settings(cls, engine: CreditEngine, settings: Settings) -> EarlyFlush:
        queue = queues.flush_queue(settings)
        return cls(engine, queue, settings.key_prefix, settings.flush_trigger_entries)

    async def __call__(self, partition: int) -> bool:
        length = int(await self.engine.redis.xlen(self.engine.keys.outbox(partition)))
        if length < self.threshold:
            return False
        done = await asyncio.to_thread(enqueue_flush, self.queue, self.prefix, partition)
        self.enqueued += int(done)
        return done

    def close(self) -> None:
        self.queue.connection.close()
