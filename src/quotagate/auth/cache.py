"""The in-process key cache: checking a key costs no round trip.

Every process reloads the active keys from Postgres every ``refresh_seconds`` (2 s), so a key
revoked with ``quotagate keys revoke`` stops working everywhere within a few seconds. When
Postgres does not answer, the cache keeps what it has: charging goes on while the ledger is
down. A copy of the key hashes is kept in Redis (``<prefix>:apikeys``) so that a gateway that
starts while Postgres is down still knows the keys; it is rewritten whenever a refresh sees a
change, and by the CLI when it creates or revokes a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

import msgspec
from redis.asyncio import Redis

from quotagate.auth.keys import SCOPES, ApiKey, Scope, key_id_of, matches
from quotagate.auth.store import KeyStore
from quotagate.engine.keys import KeySpace
from quotagate.errors import Forbidden, QuotagateError, Unauthorized

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0
"""How often every process reloads the keys: the bound on how long a revoked key still works."""


def snapshot_key(prefix: str) -> str:
    """Redis key of the copy of the active key hashes (no TTL: it is the fallback)."""
    return KeySpace(prefix).api_keys


class _Snap(msgspec.Struct, array_like=True):
    id: str
    name: str
    key_hash: str
    scopes: list[str]


def encode_snapshot(keys: Iterable[ApiKey]) -> bytes:
    rows = sorted((_Snap(k.id, k.name, k.key_hash, sorted(k.scopes)) for k in keys), key=_id)
    return msgspec.json.encode(rows)


def _id(s: _Snap) -> str:
    return s.id


def decode_snapshot(data: bytes | str) -> list[ApiKey]:
    rows = msgspec.json.decode(data, type=list[_Snap])
    return [
        ApiKey(r.id, r.name, r.key_hash, frozenset(s for s in r.scopes if s in SCOPES))
        for r in rows
    ]


async def publish_snapshot(redis: Redis, prefix: str, keys: Iterable[ApiKey]) -> None:
    await redis.set(snapshot_key(prefix), encode_snapshot(keys))


MAX_VERIFIED = 10_000
"""Presented keys remembered as verified between loads; past this the memory starts over."""


class KeyCache:
    """Active keys by id, refreshed in the background."""

    def __init__(
        self,
        store: KeyStore,
        redis: Redis,
        prefix: str,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        self.store = store
        self.redis = redis
        self.prefix = prefix
        self.refresh_seconds = refresh_seconds
        self._keys: dict[str, ApiKey] = {}
        self._verified: dict[str, ApiKey] = {}
        """Keys as presented that matched, so that a key in use is hashed once per refresh,
        not once per request. Emptied by every load, so a revocation still takes effect."""
        self._published: bytes | None = None
        self.loaded_at: float | None = None
        """monotonic time of the last successful load from Postgres."""
        self.source = "none"
        self._task: asyncio.Task[None] | None = None

    # -- the hot path -------------------------------------------------------------------

    def authenticate(self, presented: str | None) -> ApiKey:
        """The key named by ``presented`` or Unauthorized. No I/O."""
        if not presented:
            raise Unauthorized("an API key is required")
        known = self._verified.get(presented)
        if known is not None:
            return known
        key_id = key_id_of(presented)
        stored = self._keys.get(key_id) if key_id else None
        if not matches(presented, stored) or stored is None:
            raise Unauthorized("unknown or revoked API key")
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()
        self._verified[presented] = stored
        return stored

    def authorize(self, presented: str | None, *scopes: Scope) -> ApiKey:
        """The key, if it holds one of ``scopes`` (admin holds all); 401 or 403 otherwise."""
        key = self.authenticate(presented)
        if "admin" not in key.scopes and key.scopes.isdisjoint(scopes):
            raise Forbidden(f"this key's scopes do not allow this ({' or '.join(scopes)} needed)")
        return key

    # -- loading ------------------------------------------------------------------------

    def _install(self, keys: Iterable[ApiKey]) -> None:
        self._keys = {k.id: k for k in keys if k.revoked_at is None}
        self._verified = {}

    async def refresh(self) -> bool:
        """Reload from Postgres; on failure keep the cache (True when loaded)."""
        try:
            keys = await self.store.active()
        except QuotagateError as exc:
            log.warning("API keys not refreshed, serving the cached ones: %s", exc.detail)
            return False
        self._install(keys)
        self.loaded_at = time.monotonic()
        self.source = "postgres"
        data = encode_snapshot(keys)
        if data != self._published:
            with contextlib.suppress(Exception):  # the copy is a fallback; Redis may be down
                await self.redis.set(snapshot_key(self.prefix), data)
                self._published = data
        return True

    async def load_snapshot(self) -> bool:
        try:
            data = await self.redis.get(snapshot_key(self.prefix))
        except Exception as exc:
            log.warning("API key copy in Redis not readable: %s", exc)
            return False
        if data is None:
            return False
        self._install(decode_snapshot(data))
        self._published = data.encode() if isinstance(data, str) else data
        self.source = "redis"
        return True

    async def start(self) -> None:
        """First load (Postgres, else the copy in Redis), then refresh in the background."""
        if not await self.refresh() and not await self.load_snapshot():
            log.warning("no API keys loaded yet (Postgres and the Redis copy unavailable)")
        self._task = asyncio.create_task(self._loop(), name="quotagate-key-refresh")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            await self.refresh()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.store.aclose()

    def age_seconds(self) -> float | None:
        return None if self.loaded_at is None else time.monotonic() - self.loaded_at

    def __len__(self) -> int:
        return len(self._keys)
