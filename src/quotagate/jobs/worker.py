"""The RQ worker class ``quotagate worker`` runs, and how it and the scheduler ride out outages.

RQ's SimpleWorker runs each job in the worker process itself, without a fork: the job
finds the process's event loop, Redis clients and PostgreSQL pool (``jobs.runtime``) ready
from the previous job. Forking per job would open them again for every flush, several times
a second. The cost: a job that crashes the interpreter takes the worker with it; the flush
is built for that (nothing is deleted from the outbox before PostgreSQL commits).

RQ quits its work loop on a Redis error outside a job ("unhandled exception, quitting"), and
its cron scheduler does the same: a one-second outage would stop flushing until someone
restarted them. Here every step of the loop that talks to Redis waits the outage out instead
(:func:`wait_for_redis`): one log line when Redis is lost, one when it is back, however long
it takes, with backoff between the attempts. A stop asked meanwhile (SIGTERM) ends the wait:
a worker stopped while Redis is away, in a job or between jobs, exits instead of waiting for
a Redis that may be stopping with it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from redis import Redis
from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.exceptions import StopRequested

from quotagate.engine.memory import refuse_evicting_servers
from quotagate.engine.replies import unavailable
from quotagate.jobs import runtime

log = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0
"""Waits between attempts to reach Redis again: doubling from the first to the max, so an
outage of any length ends at most this long after Redis answers again."""

T = TypeVar("T")


def redis_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis is away or cannot serve for now (not a bug)."""
    return isinstance(exc, RedisError) and unavailable(exc) is not None


def wait_for_redis(
    connection: Redis, who: str, exc: BaseException, stopping: Callable[[], bool] | None = None
) -> bool:
    """Block until ``connection`` answers PING again, saying once that Redis was lost and
    once that it is back: True. False as soon as ``stopping()`` is true (a stop was asked),
    checked before each attempt."""
    started = time.monotonic()
    log.warning("%s lost Redis (%s); retrying with backoff until it answers", who, exc)
    delay = RETRY_FIRST_SECONDS
    while True:
        time.sleep(delay)
        if stopping is not None and stopping():
            log.warning("%s: asked to stop while Redis is away; stopping", who)
            return False
        with contextlib.suppress(RedisError):
            connection.ping()
            break
        delay = min(RETRY_MAX_SECONDS, delay * 2)
    log.warning("%s: Redis is back after %.0f s; resuming", who, time.monotonic() - started)
    return True


def through_outages(
    connection: Redis, who: str, step: Callable[[], T], stopping: Callable[[], bool] | None = None
) -> T:
    """``step()``, run again after each Redis outage it meets, until it completes; raises
    StopRequested when a stop is asked during an outage (see wait_for_redis)."""
    while True:
        try:
            return step()
        except RedisError as exc:
            if not redis_outage(exc):
                raise
            if not wait_for_redis(connection, who, exc, stopping):
                raise StopRequested() from exc


class LedgerWorker(SimpleWorker):
    """A SimpleWorker whose loop waits out Redis outages instead of quitting."""

    def work(self, *args: Any, **kwargs: Any) -> bool:
        refuse_evicting_servers(runtime.current().settings)  # before the first job
        return bool(super().work(*args, **kwargs))

    def _ride(self, step: Callable[[], T]) -> T:
        return through_outages(self.connection, f"worker {self.name}", step, self._stopping)

    def _stopping(self) -> bool:
        """A signal asked for a (warm) stop: RQ sets this and, while a job runs, waits for it."""
        return bool(self._stop_requested)

    def heartbeat(self, *args: Any, **kwargs: Any) -> None:
        self._ride(lambda: super(LedgerWorker, self).heartbeat(*args, **kwargs))

    def check_for_suspension(self, *args: Any, **kwargs: Any) -> None:
        self._ride(lambda: super(LedgerWorker, self).check_for_suspension(*args, **kwargs))

    def run_maintenance_tasks(self) -> None:
        self._ride(super().run_maintenance_tasks)

    def set_state(self, *args: Any, **kwargs: Any) -> None:
        # The first step of each wait for a job, outside the retries of that wait.
        self._ride(lambda: super(LedgerWorker, self).set_state(*args, **kwargs))

    def execute_job(self, *args: Any, **kwargs: Any) -> None:
        """Run the job; if Redis goes away around it (RQ's bookkeeping of the job's status),
        wait for Redis and go on to the next job rather than quit. The job is not run again
        here: RQ's registry cleanup finds it abandoned, and every job of ours is idempotent."""
        try:
            super().execute_job(*args, **kwargs)
        except RedisError as exc:
            if not redis_outage(exc):
                raise
            # Stopped meanwhile: back to RQ's loop, which sees the stop and exits.
            wait_for_redis(self.connection, f"worker {self.name}", exc, self._stopping)
