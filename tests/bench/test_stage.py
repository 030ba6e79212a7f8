"""The stage's cleanup leaves nothing of the run: its keys, and RQ's keys for its queues."""

from __future__ import annotations

import os
import uuid

import pytest
import redis
from tests.support.cluster import RedisCluster, redis_cli_binary

from quotagate.bench.stage import _delete_prefix
from quotagate.engine.connection import sync_redis_from_url


async def test_cleanup_removes_the_prefix_and_its_queues(redis_url: str) -> None:
    prefix = f"qgbenchtest{uuid.uuid4().hex[:8]}"
    job = f"job{uuid.uuid4().hex[:8]}"
    other = f"qgbenchother{uuid.uuid4().hex[:8]}:kept"
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(f"{prefix}:a", 1)
        client.set(other, 1)
        client.rpush(f"rq:queue:{prefix}:flush", job)
        client.hset(f"rq:job:{job}", "description", "flush partition 3")
        client.sadd("rq:queues", f"rq:queue:{prefix}:flush")
        await _delete_prefix(redis_url, redis_url, prefix)
        assert client.exists(f"{prefix}:a", f"rq:queue:{prefix}:flush", f"rq:job:{job}") == 0
        assert not client.sismember("rq:queues", f"rq:queue:{prefix}:flush")
        assert client.exists(other) == 1
    finally:
        client.delete(other)
        client.close()


@pytest.mark.skipif(
    os.environ.get("QUOTAGATE_TEST_CLUSTER", "1") == "0" or redis_cli_binary() is None,
    reason="no test cluster (QUOTAGATE_TEST_CLUSTER=0, or no redis-cli)",
)
async def test_cleanup_on_a_cluster_reaches_every_master_and_the_queue_redis(
    test_cluster: RedisCluster, queue_url: str
) -> None:
    prefix = f"qgbenchtest{uuid.uuid4().hex[:8]}"
    cluster = sync_redis_from_url(test_cluster.url)
    assert isinstance(cluster, redis.RedisCluster)
    queues = redis.Redis.from_url(queue_url)
    try:
        keys = [f"{prefix}:{{{p}}}:a" for p in range(64)]  # 64 partitions' tags: every master
        for key in keys:
            cluster.set(key, 1)
        masters = {cluster.get_node_from_key(k).name for k in keys}  # type: ignore[no-untyped-call]
        assert len(masters) == test_cluster.masters
        queues.rpush(f"rq:queue:{prefix}:flush", "job")
        await _delete_prefix(test_cluster.url, queue_url, prefix)
        assert sum(cluster.exists(k) for k in keys) == 0
        assert queues.exists(f"rq:queue:{prefix}:flush") == 0
    finally:
        queues.delete(f"rq:queue:{prefix}:flush")
        queues.close()
        cluster.close()
