"""What the gateway holds while it runs: the engine, the ledger, the key cache, and their
start and stop.

Start-up order, and why:
1. The ledger: a schema behind the code stops the start (with the command to run); a Postgres
   that does not answer does not (charging goes on from Redis).
2. The engine: partitions are checked. An empty Redis is opened as a fresh deployment only when
   the ledger holds no account; otherwise Redis lost its data, and charges answer
   ``account_not_loaded`` until ``quotagate recover`` has rebuilt it.
3. The key cache: loaded before the first request, then refreshed in the background.
4. The identity source: the signing keys of clients' tokens (a JWKS is fetched here first).
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis

from quotagate import metrics
from quotagate.api.flush_trigger import FlushTrigger
from quotagate.api.ledger_link import LedgerLink, ledger_holds_accounts
from quotagate.auth.cache import KeyCache
from quotagate.auth.identity import identity_source
from quotagate.auth.store import KeyStore
from quotagate.config import Config
from quotagate.engine import CreditEngine
from quotagate.engine.engine import redis_from_url
from quotagate.errors import BackendError
from quotagate.jobs.trigger import EarlyFlush
from quotagate.settings import Settings

log = logging.getLogger(__name__)

REDIS_SOCKET_TIMEOUT_SECONDS = 5.0
"""A Redis that accepts the connection and then hangs still frees the connection after this.
The hook does not wait that long: it has its own, shorter, bound (authz.timeout_ms)."""

REDIS_START_WAIT_SECONDS = 10.0
"""How long the start waits for Redis (a container started just before us) before giving up."""


def redis_client(url: str) -> Redis:
    return redis_from_url(url, socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS, connect_timeout=2)


class Gateway:
    def __init__(self, settings: Settings, config: Config) -> None:
        self.settings = settings
        self.config = config
        self.engine = CreditEngine(
            redis_client(settings.redis_url), config, prefix=settings.key_prefix
        )
        self.ledger = LedgerLink(settings.database_url)
        self.keys = KeyCache(
            KeyStore(settings.database_url), self.engine.redis, settings.key_prefix
        )
        self.identity = identity_source(config.identity, settings.jwt_secret)
        self.early_flush = EarlyFlush.from_settings(self.engine, settings)
        self.flush_trigger = FlushTrigger(self.engine, self.early_flush)
        self.redis_state = "unknown"
        self.started_at = time.monotonic()

    async def start(self) -> None:
        await self.ledger.start()
        holds = await ledger_holds_accounts(self.settings.database_url)
        self.redis_state = await self._initialize_engine(allow_fresh=holds is False)
        if self.redis_state == "needs_recovery":
            log.warning(
                "Redis holds no credit data but the ledger does (or cannot say): charges answer "
                "account_not_loaded until `quotagate recover` has run"
            )
        await self.keys.start()
        await self.identity.start()

    async def _initialize_engine(self, *, allow_fresh: bool) -> str:
        deadline = time.monotonic() + REDIS_START_WAIT_SECONDS
        while True:
            try:
                return await self.engine.initialize(allow_fresh=allow_fresh)
            except BackendError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)

    async def stop(self) -> None:
        metrics.TALLY.flush()  # the last second's counts, into this worker's metric files
        await self.keys.aclose()
        await self.identity.aclose()
        await self.flush_trigger.aclose()
        self.early_flush.close()
        await self.ledger.aclose()
        await self.engine.aclose()
