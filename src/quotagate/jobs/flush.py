"""The flush as RQ jobs: one job per partition, enqueued without piling up duplicates.

    flush_partition(p)     the job: flush partition p's outbox into the ledger
    enqueue_flushes()      a job for the schedule (about every second): enqueue a flush for
                           each partition whose outbox is not empty
    enqueue_flush(q, p)    enqueue one partition's flush unless one is queued or backing off

Schedule it with ``rq cron`` (the scheduler's config module)::

    cron.register(enqueue_flushes, queue_name=flush_queue_name(prefix), interval=1)

Deduplication: ``P:flushq:<n>`` on the queue Redis is set NX before a flush is enqueued and
deleted when the job starts; while it exists no other flush of the partition is enqueued, so
a slow worker or a busy gateway never stacks jobs. Its TTL frees it if a worker dies.

Backoff: when PostgreSQL (or the credit data's Redis) fails, the job sets the flag again for
1, 2, 4... up to 30 seconds (``P:flushfail:<n>`` counts the failures), so nothing enqueues a
flush of that partition until then. The job itself ends normally ("postgres_unavailable"):
the outbox keeps every entry, and the schedule brings the next attempt when the backoff has
passed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue

from quotagate.engine import CreditEngine
from quotagate.engine.keys import flush_failures, flush_queued_flag
from quotagate.errors import BackendUnavailable
from quotagate.jobs import queues, runtime
from quotagate.ledger import flush as ledger_flush
from quotagate.settings import Settings

log = logging.getLogger(__name__)

QUEUED_FLAG_TTL_MS = 30_000
"""How long the queued flag blocks other enqueues when the job never starts (a worker that
died, a queue that nobody serves). Jobs delete it as they start, so normally it lives for
the time a job waits in the queue."""

BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
"""Retry delays while PostgreSQL fails: doubling from the first to the max."""

FAILURES_TTL_SECONDS = 3600
"""A failure streak older than this is forgotten (the next failure starts the backoff over)."""

JOB_TIMEOUT_SECONDS = 300
"""RQ's hard limit for one flush job; the flush's own time budget ends it far sooner."""

RESULT_TTL_SECONDS = 60
"""Finished flush jobs are kept this long (several run per second; they are not history)."""

FAILURE_TTL_SECONDS = 86400
"""Failed flush jobs (a bug: an entry PostgreSQL refuses goes to the ledger's quarantine and
fails nothing) stay in RQ's failed registry a day.
PostgreSQL or the credit Redis being down is not a failure of the job: it backs off."""


def backoff_seconds(failures: int) -> float:
    """Delay before the next flush after ``failures`` consecutive failures."""
    return float(min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** max(0, failures - 1)))


def enqueue_flush(queue: Queue, prefix: str, partition: int) -> bool:
    """Enqueue a flush of ``partition`` unless one is queued or backing off. True if enqueued."""
    flag = flush_queued_flag(prefix, partition)
    if not queue.connection.set(flag, "queued", nx=True, px=QUEUED_FLAG_TTL_MS):
        return False
    queue.enqueue(
        flush_partition,
        partition,
        job_timeout=JOB_TIMEOUT_SECONDS,
        result_ttl=RESULT_TTL_SECONDS,
        failure_ttl=FAILURE_TTL_SECONDS,
        description=f"flush partition {partition}",
    )
    return True


def enqueue_flushes() -> int:
    """Job for the schedule: enqueue a flush for each non-empty partition. Returns how many."""
    rt = runtime.current()
    queue = queues.flush_queue(rt.settings, rt.queue_redis)

    async def work() -> int:
        return await enqueue_due_flushes(await rt.engine(), queue, rt.settings.key_prefix)

    return rt.run(work())


async def enqueue_due_flushes(engine: CreditEngine, queue: Queue, prefix: str) -> int:
    """Enqueue a flush for each partition whose outbox or shadow stream is not empty (one
    XLEN pipeline)."""
    async with engine.redis.pipeline(transaction=False) as pipe:
        for p in range(engine.config.partitions):
            pipe.xlen(engine.keys.outbox(p))
            pipe.xlen(engine.keys.shadow(p))
        lengths = [int(n) for n in await pipe.execute()]
    # A few quick commands to the queue Redis; a worker's loop has nothing else to run.
    due = [p for p in range(engine.config.partitions) if lengths[2 * p] or lengths[2 * p + 1]]
    return sum(enqueue_flush(queue, prefix, p) for p in due)


def flush_partition(partition: int) -> dict[str, Any]:
    """Job: flush one partition's outbox into the ledger (see quotagate.ledger.flush)."""
    rt = runtime.current()
    settings = rt.settings
    if not 0 <= partition < rt.config.partitions:
        raise ValueError(f"partition {partition} is not in 0..{rt.config.partitions - 1}")
    conn = rt.queue_redis
    conn.delete(flush_queued_flag(settings.key_prefix, partition))
    try:
        result = rt.run(_flush(rt, partition))
    except (BackendUnavailable, RedisConnectionError, RedisTimeoutError) as exc:
        from_redis = isinstance(exc.__cause__, RedisError) or not isinstance(
            exc, BackendUnavailable
        )
        down = "redis" if from_redis else "postgres"
        delay = _note_failure(settings, conn, partition)
        log.warning("flush of partition %d: %s; next try in %.0f s", partition, exc, delay)
        return {"partition": partition, "status": f"{down}_unavailable", "retry_in": delay}
    conn.delete(flush_failures(settings.key_prefix, partition))
    if not result.busy and not result.drained:
        # The time budget ended this job with entries left: queue the rest behind the others.
        enqueue_flush(queues.flush_queue(settings, conn), settings.key_prefix, partition)
    status = "busy" if result.busy else "flushed"
    return {"status": status, **asdict(result)}


async def _flush(rt: runtime.WorkerRuntime, partition: int) -> ledger_flush.FlushResult:
    return await ledger_flush.flush_partition(
        await rt.engine(),
        await rt.ledger(),
        partition,
        batch_size=rt.settings.flush_batch_size,
        lease_seconds=rt.settings.flush_lease_seconds,
    )


def _note_failure(settings: Settings, conn: Any, partition: int) -> float:
    key = flush_failures(settings.key_prefix, partition)
    failures = int(conn.incr(key))
    conn.expire(key, FAILURES_TTL_SECONDS)
    delay = backoff_seconds(failures)
    conn.set(flush_queued_flag(settings.key_prefix, partition), "backoff", px=int(delay * 1000))
    return delay
