"""Walk the accounts of one partition in batches, without loading them all.

SCAN with the partition's key pattern visits the whole keyspace once per partition and
hands back the matches a batch at a time; memory stays bounded by ``count`` whatever the
number of accounts. SCAN may return a key twice: callers are idempotent (renewal) or
deduplicate what they report (reconciliation).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from quotagate.engine import CreditEngine

SCAN_COUNT = 2000
"""Keys Redis visits per SCAN call. Account keys are a fraction of the keyspace (each
account also has hold and rate-limit keys, and there are other partitions), so a large
count keeps round trips few; each call still takes well under a millisecond of Redis."""


async def account_batches(
    engine: CreditEngine, partition: int, *, count: int = SCAN_COUNT
) -> AsyncIterator[list[str]]:
    """Account ids of ``partition``, in batches of those one SCAN call found."""
    pattern = engine.keys.account_pattern(partition)
    cursor: int = 0
    while True:
        cursor, keys = await engine.redis.scan(cursor, match=pattern, count=count)
        if keys:
            yield [engine.keys.account_id_from_key(str(k)) for k in keys]
        if cursor == 0:
            return
