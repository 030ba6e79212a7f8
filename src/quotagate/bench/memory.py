"""Redis bytes each kind of request keeps: an idempotency record of a hook charge (with an
X-Request-Id) and of an API charge with an Idempotency-Key, and an outbox entry.

Measured on the benchmark's own prefix: MEMORY USAGE of every record written (exact, the key
and its value and the allocator's rounding), MEMORY USAGE of the outboxes before and after
(samples 0: every node counted), and INFO used_memory before and after, which adds what the
keyspace's tables take per key. The steady state at a rate is bytes x rate x window.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

from quotagate.engine import CreditEngine
from quotagate.engine.idempotency import Scope

if TYPE_CHECKING:
    from collections.abc import Callable

    from quotagate.bench.runner import Run

CHARGES = 5000
"""Charges per kind: enough that per-key table growth averages out, a second or two of work."""

ACCOUNTS = [f"bench-mem-{i:03d}" for i in range(100)]

HOOK_DESCRIPTION = "GET /api/v1/items/12345"
"""What the hook writes as a charge's description: the method and the path."""


async def measure(run: Run, progress: Callable[[str], None]) -> None:
    engine = run.stage.engine
    assert engine is not None
    progress("measuring Redis bytes per hook request, API charge and outbox entry")
    await asyncio.gather(*(engine.upsert_account(a) for a in ACCOUNTS))
    await run.stage.clear_outboxes()
    hook = await _charges(engine, "hook", HOOK_DESCRIPTION)
    await run.stage.clear_outboxes()
    api = await _charges(engine, "api", "")
    await run.stage.clear_outboxes()
    run.report.memory = {
        "hook_record_bytes": hook["record"],
        "hook_request_used_memory_bytes": hook["used"],
        "api_record_bytes": api["record"],
        "api_charge_used_memory_bytes": api["used"],
        "outbox_entry_bytes": api["outbox"],
        "hook_outbox_entry_bytes": hook["outbox"],
    }


async def _charges(engine: CreditEngine, scope: Scope, description: str) -> dict[str, float]:
    """CHARGES consumes with fresh keys: bytes per charge of its record, its outbox entry, and
    of INFO used_memory (all it keeps)."""
    outboxes = [engine.keys.outbox(p) for p in range(engine.config.partitions)]
    outbox_before = await _usage(engine, outboxes)
    used_before = await _used_memory(engine)
    keys = [uuid.uuid4().hex if scope == "hook" else str(uuid.uuid4()) for _ in range(CHARGES)]
    for first in range(0, CHARGES, 500):
        await asyncio.gather(*(
            engine.consume_soon(
                ACCOUNTS[i % len(ACCOUNTS)], "api_call", description=description,
                idempotency_key=keys[i], idempotency_scope=scope,
            )
            for i in range(first, first + 500)
        ))  # fmt: skip
    used_after = await _used_memory(engine)
    scoped = [("hook " if scope == "hook" else "") + k for k in keys]
    names = [
        engine.keys.account(ACCOUNTS[i % len(ACCOUNTS)], key).idempotency
        for i, key in enumerate(scoped)
    ]
    records = await _usage(engine, names)
    outbox_after = await _usage(engine, outboxes)
    await engine.redis.delete(*names)
    return {
        "record": records / CHARGES,
        "outbox": (outbox_after - outbox_before) / CHARGES,
        "used": (used_after - used_before) / CHARGES,
    }


async def _usage(engine: CreditEngine, keys: list[str]) -> int:
    async with engine.redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key, samples=0)
        sizes = await pipe.execute()
    return sum(int(s or 0) for s in sizes)


async def _used_memory(engine: CreditEngine) -> int:
    return int((await engine.redis.info("memory"))["used_memory"])
