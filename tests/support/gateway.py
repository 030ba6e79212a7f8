"""A real gateway for tests: served as `quotagate serve` serves it, on a free loopback port, in a
thread.

    with running_gateway(settings) as gw:
        httpx.get(f"{gw.url}/healthz")

The app is the one ``quotagate serve`` runs (``create_app``); only its settings and config are
the test's. API keys are made in the test database with the same store the CLI uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from tests.support.servers import free_port

from quotagate.api.app import create_app
from quotagate.api.server import uvicorn_settings
from quotagate.auth.keys import SCOPES
from quotagate.auth.store import KeyStore
from quotagate.config import Config
from quotagate.engine import CreditEngine
from quotagate.engine.connection import sync_redis_from_url
from quotagate.ledger import upgrade
from quotagate.settings import Secret, Settings


class GatewayServer:
    def __init__(self, settings: Settings, config: Config | None = None) -> None:
        self.port = free_port()
        self.app = create_app(settings, config=config)
        # Served as `quotagate serve` serves it (its HTTP protocol answers the hook).
        uv_config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", **uvicorn_settings()
        )
        self.server = uvicorn.Server(uv_config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the gateway did not start (see the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start within 20 s")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def open_redis(settings: Settings, config: Config | None = None) -> None:
    """Mark the prefix's Redis as an initialised deployment. The test sessions share one ledger
    database across many prefixes: without this, a gateway would see accounts in the ledger,
    take its empty prefix for a Redis that lost its data, and wait for recovery."""

    async def run() -> None:
        engine = CreditEngine.from_url(
            settings.redis_url, config or settings.load_config(), prefix=settings.key_prefix
        )
        try:
            await engine.initialize(allow_fresh=True)
        finally:
            await engine.aclose()

    asyncio.run(run())


@contextlib.contextmanager
def running_gateway(
    settings: Settings, config: Config | None = None, *, fresh: bool = True
) -> Iterator[GatewayServer]:
    if fresh:
        open_redis(settings, config)
    server = GatewayServer(settings, config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def gateway_settings(
    redis_url: str, database_url: str, key_prefix: str, queue_url: str | None = None
) -> Settings:
    """A gateway's settings; the queues on ``queue_url`` (a standalone Redis, needed when
    ``redis_url`` is a cluster), else on ``redis_url``."""
    return Settings(
        redis_url=Secret(redis_url),
        queue_url=Secret(queue_url or redis_url),
        database_url=Secret(database_url),
        key_prefix=key_prefix,
    )


def make_keys(database_url: str) -> dict[str, str]:
    """One fresh key per scope: {"admin": "qg_...", "service": ..., "read": ..., "hook": ...}."""

    async def run() -> dict[str, str]:
        store = KeyStore(database_url)
        try:
            return {s: (await store.create(f"test {s}", [s]))[1] for s in SCOPES}
        finally:
            await store.aclose()

    return asyncio.run(run())


def delete_prefix(redis_url: str, prefix: str) -> None:
    client = sync_redis_from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    client.close()


# -- fixtures (imported by the conftest of each folder that uses a gateway) ---------------------


@pytest.fixture(scope="session")
def migrated_database_url(database_url: str) -> str:
    """The session's database with the ledger's migrations applied (api_keys included)."""
    upgrade(database_url)
    return database_url


@pytest.fixture(scope="session")
def api_keys(migrated_database_url: str) -> dict[str, str]:
    return make_keys(migrated_database_url)


@pytest.fixture(scope="module")
def gateway_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"testgw{uuid.uuid4().hex[:10]}"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture(scope="module")
def gateway(
    redis_url: str,
    queue_url: str,
    migrated_database_url: str,
    gateway_prefix: str,
    api_keys: dict[str, str],
) -> Iterator[GatewayServer]:
    """One gateway for the module, with the shipped config, on its own key prefix. The keys
    are made first: a key made after the start is seen only at the next refresh (~2 s)."""
    settings = gateway_settings(redis_url, migrated_database_url, gateway_prefix, queue_url)
    with running_gateway(settings) as server:
        yield server


@pytest.fixture
def http(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        yield client


def new_account_id() -> str:
    return f"acct-{uuid.uuid4().hex[:12]}"
