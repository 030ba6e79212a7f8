"""API keys in Postgres (table ``api_keys``, created by the ledger's migrations).

asyncpg directly: four small statements do not need an ORM. Every call has a short timeout,
so a Postgres that hangs cannot hang the gateway's refresh loop or the CLI.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import asyncpg

from quotagate.auth.keys import SCOPES, ApiKey, Scope, check_name, check_scopes, hash_key, new_key
from quotagate.errors import BackendUnavailable, ConfigError

TIMEOUT_SECONDS = 3.0
"""Connect and statement timeout: the refresh runs every ~2 s and must not pile up."""

_COLUMNS = "id, name, key_hash, scopes, created_at, revoked_at"


def asyncpg_url(url: str) -> str:
    """asyncpg takes postgresql:// (SQLAlchemy's postgresql+asyncpg:// names the same server)."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql://{rest}" if sep and scheme.startswith("postgres") else url


def _record(row: Any) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        key_hash=row["key_hash"],
        # Lenient on read: a scope this version does not know grants nothing.
        scopes=frozenset(cast(Scope, s) for s in row["scopes"] if s in SCOPES),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


class KeyStore:
    """The api_keys table over one lazily (re)opened connection."""

    def __init__(self, database_url: str) -> None:
        self._url = asyncpg_url(database_url)
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close(timeout=TIMEOUT_SECONDS)

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self._lock:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self._url, timeout=TIMEOUT_SECONDS)
                return list(await self._conn.fetch(sql, *args, timeout=TIMEOUT_SECONDS))
            except asyncpg.UndefinedTableError:
                raise ConfigError(
                    "the api_keys table is missing: run `quotagate migrate`"
                ) from None
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.terminate()
                raise BackendUnavailable(f"Postgres did not answer: {type(exc).__name__}") from exc

    async def create(self, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
        """Store a new key; returns it and its text (shown once, never stored)."""
        name = check_name(name)
        checked = sorted(check_scopes(scopes))
        key_id, text = new_key()
        rows = await self._fetch(
            f"INSERT INTO api_keys (id, name, key_hash, scopes) VALUES ($1, $2, $3, $4) "
            f"RETURNING {_COLUMNS}",
            key_id,
            name,
            hash_key(text),
            checked,
        )
        return _record(rows[0]), text

    async def all(self, *, include_revoked: bool = True) -> list[ApiKey]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = await self._fetch(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY created_at, id")
        return [_record(r) for r in rows]

    async def active(self) -> list[ApiKey]:
        return await self.all(include_revoked=False)

    async def revoke(self, key_id: str) -> ApiKey | None:
        """Mark the key revoked (kept for the record). None when no such key exists."""
        rows = await self._fetch(
            f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 "
            f"RETURNING {_COLUMNS}",
            key_id,
        )
        return _record(rows[0]) if rows else None
