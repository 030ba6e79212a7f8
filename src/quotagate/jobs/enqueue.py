"""Enqueue the operations jobs on the jobs queue (``<prefix>:jobs``): commands, schedule."""

from __future__ import annotations

from rq import Retry

from quotagate.jobs import queues
from quotagate.settings import Settings

RENEW_TIMEOUT_SECONDS = 3600
"""RQ's limit for one partition's renewal: a million accounts over 64 partitions take seconds
each; an hour only stops a job that hangs."""

RETRY = Retry(max=3, interval=[10, 60, 300])
"""A job that failed (Redis away, a worker lost) runs again; every job here is idempotent."""

RESULT_TTL_SECONDS = 7 * 86400
"""What a renewal or a reconciliation did stays readable for a week."""

RENEW_PARTITION_JOB = "quotagate.jobs.renew.renew_partition"
"""The renewal job, by the dotted name RQ imports it by. Named rather than imported: the
renewal job enqueues through this module, and an import here would make a cycle."""


def partition_count(settings: Settings | None = None) -> int:
    return (settings or Settings.from_env()).load_config().partitions


def enqueue_renewals(
    partitions: list[int], period: str, settings: Settings | None = None
) -> list[str]:
    """One renewal job per partition; returns their job ids."""
    settings = settings or Settings.from_env()
    queue = queues.jobs_queue(settings)
    try:
        return [
            queue.enqueue(
                RENEW_PARTITION_JOB,
                p,
                period,
                job_timeout=RENEW_TIMEOUT_SECONDS,
                result_ttl=RESULT_TTL_SECONDS,
                retry=RETRY,
                description=f"renew partition {p} for {period}",
            ).id
            for p in partitions
        ]
    finally:
        queue.connection.close()
