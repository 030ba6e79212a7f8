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

from quotagate.engine import CreditEngine

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
        cursor, keys = await engine.redis.scan(cursor, match=pattern, count=count)
        if keys:
            yield [engine.keys.account_id_from_key(str(k)) for k in keys]
        if cursor == 0:
            return
