"""At most one flush per partition: a lease in Redis that a crashed worker cannot keep.

The lease is a key beside the partition's outbox (same hash tag), taken with SET NX PX and a
random token, renewed between batches, released at the end. A worker that dies (SIGKILL,
lost machine) stops renewing, and the key expires after the lease length: then another
flush may take over. Correctness never rests on the lease: a flush that outlived its lease
and runs beside another one inserts with ON CONFLICT DO NOTHING and applies balance changes
only for the rows it inserted, so the ledger still holds each transaction once. The lease
keeps the work from being done twice, and account events from being applied in parallel.
"""

from __future__ import annotations

import asyncio
import secrets

from quotagate.engine import CreditEngine


class FlushLease:
    """A held lease; obtain one with :meth:`acquire`."""

    def __init__(self, engine: CreditEngine, key: str, token: str, ttl_ms: int) -> None:
        self.engine, self.key, self.token, self.ttl_ms = engine, key, token, ttl_ms

    @classmethod
    async def acquire(
        cls, engine: CreditEngine, partition: int, ttl_seconds: float
    ) -> FlushLease | None:
        """The lease, or None when another flush holds it."""
        key = engine.keys.flush_lease(partition)
        token = secrets.token_hex(16)
        ttl_ms = max(1, int(ttl_seconds * 1000))
        if not await engine.redis.set(key, token, nx=True, px=ttl_ms):
            return None
        return cls(engine, key, token, ttl_ms)

    @classmethod
    async def wait(
        cls, engine: CreditEngine, partition: int, ttl_seconds: float, timeout_seconds: float
    ) -> FlushLease | None:
        """Take the lease, waiting up to ``timeout_seconds`` for its holder to finish."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        while True:
            lease = await cls.acquire(engine, partition, ttl_seconds)
            if lease is not None or loop.time() >= deadline:
                return lease
            await asyncio.sleep(0.05)

    async def renew(self) -> bool:
        """Extend the lease by its length; False if it expired (and may be someone else's)."""
        return bool(await self._call("renew"))

    async def release(self) -> None:
        await self._call("release")

    async def _call(self, action: str) -> int:
        """lease.lua, by FCALL like every script (``lua/lease.lua``)."""
        args = [self.token, action, str(self.ttl_ms)]
        return int(await self.engine.runner.run(self.engine.scripts["lease"], [self.key], args))
