"""The jobs' and commands' Redis Cluster client opens at most QUOTAGATE_REDIS_MAX_CONNECTIONS
connections to each node, on the real test cluster: calls past the bound wait for a free
connection, and one that waits too long fails with a sentence naming the setting, as a
BackendUnavailable (RQ retries the job), never by opening more sockets."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
from redis.asyncio.cluster import ClusterNode
from tests.support.cluster import RedisCluster, redis_cli_binary

from quotagate.engine import CreditEngine
from quotagate.engine.connection import BoundedRedisCluster, cluster_from_url
from quotagate.engine.replies import redis_failures
from quotagate.errors import BackendUnavailable, ConfigError, PoolExhausted
from quotagate.jobs.backends import engine_from
from quotagate.jobs.runtime import WorkerRuntime
from quotagate.settings import Settings

pytestmark = pytest.mark.skipif(
    os.environ.get("QUOTAGATE_TEST_CLUSTER", "1") == "0" or redis_cli_binary() is None,
    reason="no test cluster (QUOTAGATE_TEST_CLUSTER=0, or no redis-cli)",
)

BOUND = 3


def _settings(cluster_url: str, queue_url: str, **env: str) -> Settings:
    return Settings.from_env(
        {"QUOTAGATE_REDIS_URL": cluster_url, "QUOTAGATE_QUEUE_URL": queue_url, **env}
    )


def _keys_of_many_slots(count: int) -> list[str]:
    """Keys of many slots (on masters as the cluster lays them out now)."""
    run = uuid.uuid4().hex[:8]
    return [f"qgtestpool{run}:{{{i}}}:list" for i in range(count)]


def _spread_keys(client: BoundedRedisCluster, per_master: int) -> list[str]:
    """``per_master`` keys on each master the client knows now. The suite's cluster is
    shared: earlier tests move slots and fail masters over, so no fixed key list is sure to
    reach every master."""
    run = uuid.uuid4().hex[:8]
    masters: dict[str, list[str]] = {node.name: [] for node in client.get_primaries()}
    i = 0
    while any(len(keys) < per_master for keys in masters.values()):
        key = f"qgtestpool{run}:{{{i}}}:list"
        owned = masters[_master_of(client, key)]
        if len(owned) < per_master:
            owned.append(key)
        i += 1
    return [key for keys in masters.values() for key in keys]


def _master_of(client: BoundedRedisCluster, key: str) -> str:
    node = client.get_node_from_key(key)
    assert node is not None, key
    return node.name


def _connections(client: BoundedRedisCluster) -> dict[str, int]:
    """Clients connected to each master now, as the servers count them."""
    out = {}
    for node in client.get_primaries():
        server = redis.Redis(host=node.host, port=int(node.port))
        try:
            out[node.name] = len(server.client_list())
        finally:
            server.close()
    return out


@pytest.fixture
async def bounded(test_cluster: RedisCluster) -> AsyncIterator[BoundedRedisCluster]:
    client = cluster_from_url(test_cluster.url, max_connections=BOUND, decode_responses=True)
    assert isinstance(client, BoundedRedisCluster)
    await client.initialize()
    yield client
    await client.aclose()


def _nodes(client: BoundedRedisCluster) -> list[ClusterNode]:
    return client.get_nodes()


def test_the_setting_reaches_the_jobs_and_the_commands_clients(
    test_cluster: RedisCluster, queue_url: str
) -> None:
    settings = _settings(test_cluster.url, queue_url, QUOTAGATE_REDIS_MAX_CONNECTIONS="5")
    assert settings.redis_max_connections == 5
    assert _settings(test_cluster.url, queue_url).redis_max_connections == 16
    for bad in ("0", "many"):
        with pytest.raises(ConfigError, match="QUOTAGATE_REDIS_MAX_CONNECTIONS"):
            _settings(test_cluster.url, queue_url, QUOTAGATE_REDIS_MAX_CONNECTIONS=bad)

    async def bounds(engine: CreditEngine) -> set[int]:
        client = engine.redis
        assert isinstance(client, BoundedRedisCluster)
        await client.ping()
        nodes = client.get_nodes()
        assert len(nodes) >= test_cluster.masters  # every master (replicas once they synced)
        return {n.max_connections for n in nodes}  # redis-py's own bound, a node

    runtime = WorkerRuntime(settings)  # a worker's: its jobs run on its own loop
    try:

        async def worker_bounds() -> set[int]:
            return await bounds(await runtime.engine())

        assert runtime.run(worker_bounds()) == {5}
    finally:
        runtime.close()

    async def command_bounds() -> set[int]:
        engine = engine_from(settings)
        try:
            return await bounds(engine)
        finally:
            await engine.aclose()
            await engine.redis.aclose()

    assert asyncio.run(command_bounds()) == {5}


async def test_calls_past_the_bound_wait_and_no_node_gets_more_connections(
    bounded: BoundedRedisCluster, test_cluster: RedisCluster
) -> None:
    keys = _spread_keys(bounded, 14)
    masters = {_master_of(bounded, k) for k in keys}
    assert len(masters) == test_cluster.masters
    before = _connections(bounded)
    started = time.monotonic()
    # 40 calls at once that each hold a connection 0.2 s (BLPOP of an empty list).
    replies = await asyncio.gather(*(bounded.blpop([k], timeout=0.2) for k in keys))
    elapsed = time.monotonic() - started
    assert replies == [None] * len(keys)  # every call ran: none failed for lack of a socket
    assert elapsed >= (len(keys) / BOUND - 1) * 0.2  # ... BOUND at a time: the rest waited
    assert all(len(n._connections) <= BOUND for n in _nodes(bounded))
    after = _connections(bounded)
    assert all(after[port] - before[port] <= BOUND for port in before), (before, after)


async def test_pipelines_and_transactions_stay_within_the_bound(
    bounded: BoundedRedisCluster,
) -> None:
    keys = _keys_of_many_slots(30)

    async def pipeline(i: int) -> list[object]:
        async with bounded.pipeline(transaction=False) as pipe:
            pipe.set(keys[i], i)
            pipe.get(keys[(i + 7) % len(keys)])
            pipe.delete(keys[i])
            return list(await pipe.execute())

    async def transaction(i: int) -> list[object]:
        key = keys[i]
        async with bounded.pipeline(transaction=True) as pipe:
            await pipe.watch(key)  # type: ignore[no-untyped-call]  # holds its connection
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.incr(key)
            pipe.delete(key)
            return list(await pipe.execute())

    results = await asyncio.gather(
        *(pipeline(i) for i in range(len(keys))), *(transaction(i) for i in range(len(keys)))
    )
    assert all(not isinstance(r, Exception) for r in results)
    assert [r[0] for r in results[: len(keys)]] == [True] * len(keys)
    assert results[len(keys) :] == [[1, 1]] * len(keys)
    assert all(len(n._connections) <= BOUND for n in _nodes(bounded))
    assert await bounded.delete(*keys) == 0  # multi-key: split per slot, through the gate


async def test_a_call_that_waits_too_long_fails_clearly(test_cluster: RedisCluster) -> None:
    client = BoundedRedisCluster(
        startup_nodes=[ClusterNode("127.0.0.1", test_cluster.seed.port)],
        max_connections=1,
        pool_wait_seconds=0.2,
        decode_responses=True,
    )
    try:
        (key,) = _keys_of_many_slots(1)
        holding = asyncio.ensure_future(client.blpop([key], timeout=1))
        await asyncio.sleep(0.05)  # the one connection is taken
        with pytest.raises(PoolExhausted) as caught:
            await client.get(key)
        assert str(caught.value) == (
            "no connection to the Redis cluster came free in 0.2 s: all 1 a node "
            "(QUOTAGATE_REDIS_MAX_CONNECTIONS) are in use"
        )
        # As a job meets it: a backend not available for now (RQ retries the job).
        unavailable = pytest.raises(BackendUnavailable, match="QUOTAGATE_REDIS_MAX_CONNECTIONS")
        with unavailable, redis_failures():
            await client.get(key)
        assert await holding is None
        assert await client.get(key) is None  # the connection is free again
        assert all(len(n._connections) <= 1 for n in client.get_nodes())
    finally:
        await client.aclose()
