"""The stage's cleanup leaves nothing of the run: its keys, and RQ's keys for its queues."""

from __future__ import annotations

import uuid

import redis

from quotagate.bench.stage import _delete_prefix


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
        await _delete_prefix(redis_url, prefix)
        assert client.exists(f"{prefix}:a", f"rq:queue:{prefix}:flush", f"rq:job:{job}") == 0
        assert not client.sismember("rq:queues", f"rq:queue:{prefix}:flush")
        assert client.exists(other) == 1
    finally:
        client.delete(other)
        client.close()
