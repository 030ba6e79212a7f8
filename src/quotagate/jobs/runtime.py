"""What a job needs inside a worker process: one event loop, one engine, one ledger.

RQ calls jobs synchronously. ``quotagate worker`` runs RQ's SimpleWorker, which does not
fork per job, so the loop, the Redis connections and the PostgreSQL pool made for the first
job serve all the following ones (a fork per job would open them again every time). In a
forked child (RQ's default Worker) the runtime notices the new pid and builds its own.

    from quotagate.jobs import runtime

    def my_job(partition: int) -> int:
        rt = runtime.current()
        return rt.run(work(rt, partition))      # async def work(rt, p): await rt.engine() ...
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from redis import Redis

from quotagate.engine import CreditEngine
from quotagate.engine.connection import redis_from_url
from quotagate.engine.replies import redis_failures
from quotagate.jobs import queues
from quotagate.ledger import Ledger
from quotagate.settings import Settings

T = TypeVar("T")


class WorkerRuntime:
    """The long-lived resources of one worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = settings.load_config()
        self.loop = asyncio.new_event_loop()
        self.queue_redis: Redis = queues.connection(settings)
        self._engine: CreditEngine | None = None
        self._ledger: Ledger | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to completion on this process's loop. A Redis that cannot serve for
        now (not answering, LOADING, READONLY...) raises BackendUnavailable, for every job."""
        task = self.loop.create_task(coro)
        try:
            with redis_failures():
                return self.loop.run_until_complete(task)
        except BaseException:
            # A job timeout (RQ raises from a signal handler) must not leave the task to
            # resume inside the next job.
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    self.loop.run_until_complete(task)
            raise

    async def engine(self) -> CreditEngine:
        if self._engine is None:
            # On a cluster, at most QUOTAGATE_REDIS_MAX_CONNECTIONS connections a node.
            client = redis_from_url(
                str(self.settings.redis_url),
                cluster_max_connections=self.settings.redis_max_connections,
            )
            self._engine = CreditEngine(client, self.config, prefix=self.settings.key_prefix)
        return self._engine

    async def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = await Ledger.connect(str(self.settings.database_url))
        return self._ledger

    def close(self) -> None:
        async def shut() -> None:
            if self._engine is not None:
                await self._engine.aclose()
            if self._ledger is not None:
                await self._ledger.aclose()

        with contextlib.suppress(Exception):
            self.loop.run_until_complete(shut())
        self.loop.close()
        self.queue_redis.close()


_current: WorkerRuntime | None = None
_pid = 0


def current(settings: Settings | None = None) -> WorkerRuntime:
    """This process's runtime, built on first use from ``settings`` (or the environment)."""
    if _current is None or _pid != os.getpid():
        return install(settings or Settings.from_env())
    return _current


def install(settings: Settings) -> WorkerRuntime:
    """Make a runtime on ``settings`` this process's own (closing the one before, if any)."""
    global _current, _pid
    if _current is not None and _pid == os.getpid():
        atexit.unregister(_current.close)
        _current.close()
    _current = WorkerRuntime(settings)
    _pid = os.getpid()
    atexit.register(_current.close)
    return _current


def reset() -> None:
    """Close this process's runtime (the next ``current()`` builds a new one)."""
    global _current
    if _current is not None and _pid == os.getpid():
        atexit.unregister(_current.close)
        _current.close()
    _current = None
