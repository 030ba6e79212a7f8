"""The RQ queues, their names, and the connection to the Redis that holds them.

RQ does not run on Redis Cluster, so the queues live on ``QUOTAGATE_QUEUE_URL`` (by default
the credit data's server). Queue names carry the key prefix, so deployments (and test runs)
sharing a Redis never take each other's jobs:

    <prefix>:flush    flush jobs, one per partition, and the expiry sweeps (served first)
    <prefix>:jobs     everything else: renewal, reconciliation, recovery

The names, and the other keys of ours on the queue Redis, are built in
:mod:`quotagate.engine.keys`.
"""

from __future__ import annotations

from redis import Redis
from rq import Queue

from quotagate.engine import keys
from quotagate.settings import Settings

FLUSH = "flush"
JOBS = "jobs"


def flush_queue_name(prefix: str) -> str:
    return keys.queue_name(prefix, FLUSH)


def jobs_queue_name(prefix: str) -> str:
    return keys.queue_name(prefix, JOBS)


def connection(settings: Settings) -> Redis:
    """A connection to the queue Redis, as RQ wants it (bytes, not decoded)."""
    return Redis.from_url(str(settings.queue_url), socket_connect_timeout=5)


def flush_queue(settings: Settings, conn: Redis | None = None) -> Queue:
    return Queue(flush_queue_name(settings.key_prefix), connection=conn or connection(settings))


def jobs_queue(settings: Settings, conn: Redis | None = None) -> Queue:
    return Queue(jobs_queue_name(settings.key_prefix), connection=conn or connection(settings))


def worker_queues(settings: Settings, conn: Redis) -> list[Queue]:
    """The queues a worker serves, in priority order: flushes first."""
    return [flush_queue(settings, conn), jobs_queue(settings, conn)]
