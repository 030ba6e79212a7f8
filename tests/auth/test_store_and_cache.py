"""Keys in Postgres and the in-process cache: revocation reaches every process within seconds,
and the cache keeps serving while Postgres is down."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import redis.asyncio as aioredis
from tests.support.gateway import gateway_settings, running_gateway
from tests.support.servers import free_port

from quotagate.auth.cache import KeyCache, snapshot_key
from quotagate.auth.store import KeyStore
from quotagate.errors import BackendUnavailable, Forbidden, Unauthorized


async def test_create_list_revoke(migrated_database_url: str) -> None:
    store = KeyStore(migrated_database_url)
    try:
        key, text = await store.create("  billing service ", ["service", "read"])
        assert key.name == "billing service" and key.scopes == {"service", "read"}
        listed = {k.id: k for k in await store.all()}
        assert listed[key.id].key_hash == key.key_hash and text not in repr(listed[key.id])
        assert key.id in {k.id for k in await store.active()}
        revoked = await store.revoke(key.id)
        assert revoked is not None and revoked.revoked_at is not None
        assert key.id not in {k.id for k in await store.active()}
        again = await store.revoke(key.id)
        assert again is not None and again.revoked_at == revoked.revoked_at
        assert await store.revoke("0000000000000000") is None
    finally:
        await store.aclose()


async def test_store_down_is_backend_unavailable() -> None:
    store = KeyStore(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    with pytest.raises(BackendUnavailable):
        await store.active()
    await store.aclose()


async def test_cache_serves_while_postgres_is_down(
    migrated_database_url: str, aredis: aioredis.Redis, key_prefix: str
) -> None:
    setup = KeyStore(migrated_database_url)
    _, service = await setup.create("svc", ["service"])
    await setup.aclose()
    cache = KeyCache(KeyStore(migrated_database_url), aredis, key_prefix, refresh_seconds=0.05)
    await cache.start()
    try:
        assert cache.authorize(service, "service").name == "svc"
        with pytest.raises(Forbidden):
            cache.authorize(service, "admin")
        with pytest.raises(Unauthorized):
            cache.authorize(None, "service")
        await cache.store.aclose()
        cache.store = KeyStore(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
        await asyncio.sleep(0.3)  # several failed refreshes
        assert await cache.refresh() is False
        assert cache.authorize(service, "service").name == "svc"
        assert await aredis.exists(snapshot_key(key_prefix)) == 1
    finally:
        await cache.aclose()
    # A process started while Postgres is down takes the copy in Redis.
    cold = KeyCache(
        KeyStore(f"postgresql://postgres@127.0.0.1:{free_port()}/x"), aredis, key_prefix
    )
    await cold.start()
    try:
        assert cold.source == "redis"
        assert cold.authorize(service, "service").name == "svc"
    finally:
        await cold.aclose()


def test_revoked_key_stops_working_on_every_process(
    redis_url: str, migrated_database_url: str, key_prefix: str
) -> None:
    async def create() -> tuple[str, str]:
        store = KeyStore(migrated_database_url)
        try:
            key, text = await store.create("to revoke", ["read"])
            return key.id, text
        finally:
            await store.aclose()

    async def revoke(key_id: str) -> None:
        store = KeyStore(migrated_database_url)
        try:
            await store.revoke(key_id)
        finally:
            await store.aclose()

    key_id, text = asyncio.run(create())
    settings = gateway_settings(redis_url, migrated_database_url, key_prefix)
    with running_gateway(settings) as one, running_gateway(settings, fresh=False) as two:
        headers = {"Authorization": f"Bearer {text}"}
        for gw in (one, two):
            assert httpx.get(f"{gw.url}/v1/resources", headers=headers).status_code == 200
        asyncio.run(revoke(key_id))
        revoked_at = time.monotonic()
        refused: dict[str, float] = {}
        while len(refused) < 2 and time.monotonic() - revoked_at < 10:
            for gw in (one, two):
                if gw.url not in refused:
                    r = httpx.get(f"{gw.url}/v1/resources", headers=headers)
                    if r.status_code == 401:
                        refused[gw.url] = time.monotonic() - revoked_at
            time.sleep(0.05)
        assert len(refused) == 2
        assert max(refused.values()) < 4.0, refused
