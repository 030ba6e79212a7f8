"""Walk the accounts of one partition in batches, without loading them all.

Two ways, for two needs; both may return an id twice, so callers are idempotent (renewal) or
deduplicate what they report (reconciliation):

- ``account_batches``: SSCAN of the partition's account index, which the engine's scripts keep.
  It visits only that partition's accounts, so a pass over every partition costs one visit per
  account. For work over the accounts the engine made (renewal).
- ``account_batches_by_scan``: SCAN of the keyspace with the partition's key pattern. It walks
  every key once per partition, but also finds account keys written behind the engine's back,
  which is what reconciliation is for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

from redis.asyncio import RedisCluster

from quotagate.engine import CreditEngine
from quotagate.engine.connection import is_cluster

SCAN_COUNT = 2000
"""Keys (or ids) Redis visits per call: few round trips, each well under a millisecond."""


async def account_batches(
    engine: CreditEngine, partition: int, *, count: int = SCAN_COUNT
) -> AsyncIterator[list[str]]:
    """Account ids of ``partition`` from its index, a batch per SSCAN call."""
    async for batch in engine.account_ids(partition, count=count):
        yield batch


async def account_batches_by_scan(
    engine: CreditEngine, partition: int, *, count: int = SCAN_COUNT
) -> AsyncIterator[list[str]]:
    """Account ids of ``partition`` found by a SCAN of the keyspace, a batch per call."""
    pattern = engine.keys.account_pattern(partition)
    cursor: int = 0
    while True:
        cursor, keys = await _scan(engine, partition, cursor, pattern, count)
        if keys:
            yield [engine.keys.account_id_from_key(str(k)) for k in keys]
        if cursor == 0:
            return


async def _scan(
    engine: CreditEngine, partition: int, cursor: int, pattern: str, count: int
) -> tuple[int, list[Any]]:
    """One SCAN call; on a cluster, of the master that holds the partition's slot (the only
    one whose keys can match), whose cursor redis-py hands back by node name."""
    if not is_cluster(engine.redis):
        return cast(
            tuple[int, list[Any]], await engine.redis.scan(cursor, match=pattern, count=count)
        )
    cluster = cast(RedisCluster, engine.redis)
    node = cluster.get_node_from_key(engine.keys.cfg(partition))
    reply = await cluster.scan(cursor, match=pattern, count=count, target_nodes=node)
    cursors = cast(dict[str, int], reply[0])
    return int(next(iter(cursors.values()))), reply[1]
