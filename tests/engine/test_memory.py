"""A Redis that may evict quotagate's keys is refused at start; /readyz and /metrics show memory."""

from __future__ import annotations

import httpx
import pytest
import redis
from tests.conftest import EngineFactory
from tests.engine.configs import PLAIN
from tests.support.gateway import (  # noqa: F401 - fixtures
    api_keys,
    gateway,
    gateway_prefix,
    http,
    migrated_database_url,
)
from tests.support.servers import RedisProcess

from quotagate.engine.connection import sync_redis_from_url
from quotagate.engine.memory import ALLOW_EVICTION_ENV, refuse_evicting_servers
from quotagate.errors import EvictingRedis
from quotagate.settings import Secret, Settings


def _set_policy(server: RedisProcess, policy: str) -> None:
    client = redis.Redis.from_url(server.url)
    client.config_set("maxmemory-policy", policy)
    client.close()


# On a redis-server of its own, never the suite's Redis: a cluster variant would be the same.
@pytest.mark.backend_neutral
@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
async def test_an_evicting_redis_is_refused_at_start(
    make_engine: EngineFactory,
    private_redis: RedisProcess,
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
) -> None:
    monkeypatch.delenv(ALLOW_EVICTION_ENV, raising=False)
    _set_policy(private_redis, policy)
    with pytest.raises(EvictingRedis) as refused:
        await make_engine(PLAIN, url=private_redis.url)
    assert str(refused.value) == (
        f"Redis has maxmemory-policy {policy}, which may evict quotagate's accounts, "
        "idempotency records and outbox entries: set it to noeviction "
        "(or QUOTAGATE_ALLOW_EVICTION=1 to start anyway)"
    )
    assert redis.Redis.from_url(private_redis.url).dbsize() == 0  # wrote nothing

    settings = Settings(redis_url=Secret(private_redis.url), queue_url=Secret(private_redis.url))
    with pytest.raises(EvictingRedis, match=r"^QUOTAGATE_REDIS_URL has maxmemory-policy"):
        refuse_evicting_servers(settings)

    monkeypatch.setenv(ALLOW_EVICTION_ENV, "1")
    engine = await make_engine(PLAIN, url=private_redis.url)
    assert await engine.is_ready()
    refuse_evicting_servers(settings)


def test_the_worker_checks_the_queue_redis_too(
    private_redis: RedisProcess, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOW_EVICTION_ENV, raising=False)
    _set_policy(private_redis, "allkeys-lfu")
    settings = Settings(redis_url=Secret(redis_url), queue_url=Secret(private_redis.url))
    with pytest.raises(
        EvictingRedis, match=r"^QUOTAGATE_QUEUE_URL has maxmemory-policy allkeys-lfu"
    ):
        refuse_evicting_servers(settings)


def test_readiness_and_metrics_report_used_memory_against_maxmemory(
    http: httpx.Client,  # noqa: F811
    redis_url: str,
) -> None:
    client = sync_redis_from_url(redis_url)
    maxmemory = client.config_get("maxmemory")["maxmemory"]
    assert maxmemory is not None
    limit = int(maxmemory)
    client.close()
    body = http.get("/readyz").json()
    memory = body["redis_memory"]
    assert (memory["max_bytes"], memory["policy"]) == (limit, "noeviction")
    assert memory["used_bytes"] > 100_000
    text = http.get("/metrics").text
    assert f"quotagate_redis_maxmemory_bytes {float(limit)}" in text
    assert "quotagate_redis_used_memory_bytes " in text
