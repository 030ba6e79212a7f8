"""Redis memory: quotagate's keys must never be evicted, and operators must see the headroom.

An evicted account hash reads as a missing account; an evicted idempotency record lets a retry
charge again; an evicted outbox entry is a transaction lost before it reached PostgreSQL. So
the gateway, the worker and recovery refuse at start a Redis whose ``maxmemory-policy`` may
evict (every policy but ``noeviction``: the ``volatile-*`` ones evict idempotency records and
rate-limit states, which carry a TTL). With ``noeviction`` a full Redis refuses writes, which
the gateway reports, instead of dropping data silently.

``QUOTAGATE_ALLOW_EVICTION=1`` lets a deployment that knows what it does (a Redis shared with
a cache, whose quotagate keys it sized for) start anyway.

The policy and the figures come from ``INFO memory``, which managed Redis services answer
even where they rename or forbid ``CONFIG GET``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.asyncio import Redis, RedisCluster

from quotagate.engine.connection import is_cluster, sync_redis_from_url
from quotagate.errors import EvictingRedis
from quotagate.settings import Settings

log = logging.getLogger(__name__)

ALLOW_EVICTION_ENV = "QUOTAGATE_ALLOW_EVICTION"
"""Set to 1 to start on a Redis whose maxmemory-policy may evict keys."""

SAFE_POLICY = "noeviction"


@dataclass(frozen=True, slots=True)
class MemoryState:
    """What ``INFO memory`` says: bytes used, the limit (0: none) and the eviction policy."""

    used_bytes: int
    max_bytes: int
    policy: str

    @property
    def used_fraction(self) -> float | None:
        """Used memory over maxmemory; None when Redis has no limit."""
        return self.used_bytes / self.max_bytes if self.max_bytes else None


def memory_state(info: Mapping[str, Any]) -> MemoryState:
    return MemoryState(
        int(info.get("used_memory", 0)),
        int(info.get("maxmemory", 0)),
        str(info.get("maxmemory_policy", SAFE_POLICY)),
    )


def eviction_allowed(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get(ALLOW_EVICTION_ENV, "") == "1"


def refuse_eviction(state: MemoryState, where: str, *, allowed: bool | None = None) -> None:
    """Raise EvictingRedis when ``state``'s policy may evict, unless the override is set."""
    if state.policy == SAFE_POLICY or (eviction_allowed() if allowed is None else allowed):
        return
    raise EvictingRedis(
        f"{where} has maxmemory-policy {state.policy}, which may evict quotagate's accounts, "
        f"idempotency records and outbox entries: set it to {SAFE_POLICY} "
        f"(or {ALLOW_EVICTION_ENV}=1 to start anyway)"
    )


async def read_memory_state(client: Redis) -> MemoryState:
    """``INFO memory`` of the server, or of every master of a cluster taken together."""
    if not is_cluster(client):
        return memory_state(await client.info("memory"))
    cluster = cast(RedisCluster, client)
    replies = await cluster.info("memory", target_nodes=RedisCluster.PRIMARIES)
    return cluster_memory_state(replies)


def cluster_memory_state(replies: Mapping[str, Mapping[str, Any]]) -> MemoryState:
    """The masters' memory as one: bytes and limits summed, and the policy of the first
    master that may evict (any one that does loses its partitions' keys)."""
    states = [memory_state(info) for info in replies.values()]
    risky = [s.policy for s in states if s.policy != SAFE_POLICY]
    return MemoryState(
        sum(s.used_bytes for s in states),
        sum(s.max_bytes for s in states),
        risky[0] if risky else SAFE_POLICY,
    )


async def refuse_evicting_redis(client: Redis, where: str = "Redis") -> MemoryState | None:
    """The start-up check of the gateway and of recovery (through the engine's initialize).
    A server that refuses INFO (an in-memory stand-in for tests) cannot be checked: it is let
    through with a warning, as nothing can be said about its policy."""
    try:
        state = await read_memory_state(client)
    except redis.ResponseError as exc:
        log.warning("%s did not answer INFO memory (%s): eviction policy not checked", where, exc)
        return None
    refuse_eviction(state, where)
    return state


def refuse_evicting_servers(settings: Settings) -> None:
    """The worker's start-up check, synchronous, of both Redis it uses: the credit data and
    the queues (an evicted job is a flush that never runs)."""
    urls = {"QUOTAGATE_REDIS_URL": settings.redis_url, "QUOTAGATE_QUEUE_URL": settings.queue_url}
    for where, secret in urls.items():
        url = str(secret)
        client = sync_redis_from_url(url)
        try:
            if isinstance(client, redis.RedisCluster):
                replies = client.info("memory", target_nodes=redis.RedisCluster.PRIMARIES)
                refuse_eviction(cluster_memory_state(replies), where)
            else:
                refuse_eviction(memory_state(client.info("memory")), where)
        finally:
            client.close()
