"""The engine as the operators' commands open it (jobs use quotagate.jobs.runtime's).

No ``engine.initialize()`` here: run on a Redis that had just lost its data, it would mark it
ready and let charges treat accounts as empty. Scripts load on first use (the runner loads
their library when Redis does not hold it); commands that need the tier tables call
``ready_engine`` in the CLI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from redis.asyncio import BlockingConnectionPool, Redis

from quotagate.engine import CreditEngine
from quotagate.engine.connection import (
    POOL_WAIT_SECONDS,
    cluster_from_url,
    is_cluster,
    is_cluster_url,
)
from quotagate.settings import Settings


def engine_from(settings: Settings) -> CreditEngine:
    """An engine on the settings' Redis, prefix and config, with a bounded connection pool:
    QUOTAGATE_REDIS_MAX_CONNECTIONS connections (to each node of a cluster), the calls past
    them waiting for a free one. Commands run many calls at once (a batch of renewals is
    gathered): the surplus waits instead of opening a connection each. Script calls go over
    the engine's own connection to each master, not through the pool."""
    url = str(settings.redis_url)
    if is_cluster_url(url):
        cluster = cluster_from_url(
            url,
            max_connections=settings.redis_max_connections,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=5,
        )
        return CreditEngine(
            cast(Redis, cluster), settings.load_config(), prefix=settings.key_prefix
        )
    pool = BlockingConnectionPool.from_url(
        str(settings.redis_url),
        max_connections=settings.redis_max_connections,
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
