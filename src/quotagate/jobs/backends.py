"""The engine as the operators' commands open it (jobs use quotagate.jobs.runtime's).

No ``engine.initialize()`` here: run on a Redis that had just lost its data, it would mark it
ready and let charges treat accounts as empty. Scripts load on first use (the runner reloads
them on NOSCRIPT); commands that need the tier tables call ``ready_engine`` in the CLI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from redis.asyncio import BlockingConnectionPool, Redis

from quotagate.engine import CreditEngine
from quotagate.engine.connection import cluster_from_url, is_cluster, is_cluster_url
from quotagate.settings import Settings

MAX_REDIS_CONNECTIONS = 16
"""Connections one job opens to the credit Redis. Jobs run many calls at once (a batch of
renewals is gathered); a bounded pool makes the surplus wait instead of opening one each."""

POOL_WAIT_SECONDS = 30
"""How long a call waits for a free connection before the job fails (and RQ retries it)."""


def engine_from(settings: Settings) -> CreditEngine:
    """An engine on the settings' Redis, prefix and config, with a bounded connection pool.
    On a cluster, redis-py's cluster client keeps a pool per node (and fails, rather than
    waits, past its bound: left at its default); script calls go over the engine's own
    connection to each master, not through a pool."""
    url = str(settings.redis_url)
    if is_cluster_url(url):
        cluster = cluster_from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=5,
        )
        return CreditEngine(
            cast(Redis, cluster), settings.load_config(), prefix=settings.key_prefix
        )
    pool = BlockingConnectionPool.from_url(
        str(settings.redis_url),
        max_connections=MAX_REDIS_CONNECTIONS,
        timeout=POOL_WAIT_SECONDS,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=5,  # like the engine's own: a hung server fails, it does not hang us
    )
    redis = Redis(connection_pool=pool)
    return CreditEngine(redis, settings.load_config(), prefix=settings.key_prefix)


@asynccontextmanager
async def open_engine(settings: Settings) -> AsyncIterator[CreditEngine]:
    engine = engine_from(settings)
    try:
        yield engine
    finally:
        await engine.aclose()
        if not is_cluster(engine.redis):  # a cluster client closes its pools itself
            await engine.redis.connection_pool.disconnect()
