"""50,000 hook requests with distinct X-Request-Id leave nothing in Redis once their window
has passed, and a retry inside the window is not charged twice.

On a private Redis, so that used_memory counts only what these requests leave.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import redis.asyncio as aioredis
from tests.support.gateway import (  # noqa: F401 - fixtures
    api_keys,
    gateway_settings,
    migrated_database_url,
    open_redis,
)
from tests.support.servers import RedisProcess

from quotagate.api.app import create_app
from quotagate.api.routes.hook import Hook
from quotagate.config import Config, parse_config

REQUESTS = 50_000
WINDOW_SECONDS = 20
"""The records' window: the test waits it out. Sending the requests takes 3 to 8 s; the window
must outlast that, so that all 50,000 records are in Redis at once and the retry is inside."""
ACCOUNTS = [f"mem-{i:02d}" for i in range(20)]

CONFIG = f"""
partitions = 8
opening_grant = false
[resources]
unit = 1
[tiers.free]
credit_limit = 1000000
monthly_grant = 0
[idempotency]
hook_ttl_seconds = {WINDOW_SECONDS}
[authz]
timeout_ms = 10000
"""

NOISE_BYTES = 512 * 1024
"""What used_memory may differ by with nothing left behind (allocator and dict sizes); the
records alone would be about 10 MB."""


def _headers(hook_key: str, account_id: str, request_id: str) -> dict[str, str]:
    return {
        "x-quotagate-key": hook_key,
        "x-account-id": account_id,
        "x-quota-resource": "unit",
        "x-request-id": request_id,
    }


async def _used_memory(client: aioredis.Redis) -> int:
    return int((await client.info("memory"))["used_memory"])


async def _trim_outboxes(client: aioredis.Redis, config: Config, prefix: str) -> None:
    """What a flush does once PostgreSQL has the entries: they leave the outbox."""
    for p in range(config.partitions):
        await client.xtrim(f"{prefix}:{{{p}}}:outbox", maxlen=0)


async def test_hook_records_leave_redis_after_their_window(
    private_redis: RedisProcess,
    migrated_database_url: str,  # noqa: F811
    api_keys: dict[str, str],  # noqa: F811
    key_prefix: str,
) -> None:
    config = parse_config(CONFIG)
    settings = gateway_settings(private_redis.url, migrated_database_url, key_prefix)
    # No early flush jobs: their queue keys would count as what the requests left.
    settings = dataclasses.replace(settings, flush_trigger_entries=10_000_000)
    await asyncio.to_thread(open_redis, settings, config)
    app = create_app(settings, config=config)
    hook = getattr(app, "authz_hook", None)  # the hook the gateway answers before its router
    assert isinstance(hook, Hook)
    client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    async with app.router.lifespan_context(app):
        engine = app.state.gateway.engine
        for account_id in ACCOUNTS:
            await engine.upsert_account(account_id)
            await engine.credit(account_id, REQUESTS)
        await _trim_outboxes(client, config, key_prefix)
        keys_before, memory_before = await client.dbsize(), await _used_memory(client)

        started = time.monotonic()
        for first in range(0, REQUESTS, 250):
            answers = await asyncio.gather(*(
                hook.answer("GET", "/v1/authz", _headers(
                    api_keys["hook"], ACCOUNTS[i % len(ACCOUNTS)], f"req-{i:06d}"
                ))
                for i in range(first, first + 250)
            ))  # fmt: skip
            assert [a.status for a in answers] == [200] * 250
        assert time.monotonic() - started < WINDOW_SECONDS - 5  # the retry below is inside
        assert await client.dbsize() == keys_before + REQUESTS

        retry = await hook.answer(
            "GET", "/v1/authz", _headers(api_keys["hook"], ACCOUNTS[0], "req-000000")
        )
        assert (retry.status, (b"idempotent-replayed", b"true") in retry.headers) == (200, True)
        charged = REQUESTS // len(ACCOUNTS)
        for account_id in ACCOUNTS:
            assert (await engine.get_account(account_id)).balance == REQUESTS - charged

        await _trim_outboxes(client, config, key_prefix)
        for _ in range((WINDOW_SECONDS + 30) * 5):  # the window, and Redis's expiry cycle
            if await client.dbsize() == keys_before:
                break
            await asyncio.sleep(0.2)
        assert await client.dbsize() == keys_before
        await asyncio.sleep(1.5)  # serverCron shrinks the emptied key tables
        memory_after = await _used_memory(client)
    await client.aclose()
    assert abs(memory_after - memory_before) < NOISE_BYTES, (memory_before, memory_after)
