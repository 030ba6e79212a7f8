"""The PostgreSQL server as commands meet it: does it answer, has it our database.

`quotagate migrate` creates the database when it is missing and the role may; when the role
may not, it says which command to run. Every other command is told to run `migrate`.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from quotagate.errors import ConfigError
from quotagate.ledger.urls import asyncpg_dsn
from quotagate.settings import Settings

PROBE_TIMEOUT_SECONDS = 5.0

MAINTENANCE_DATABASE = "postgres"
"""The database every PostgreSQL server has, where a missing one can be created from."""

_UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,  # starting up, shutting down, in recovery
    asyncpg.InsufficientResourcesError,  # too many connections
)
"""A server that does not answer, or answers that it cannot serve for now: a command that
works without PostgreSQL goes on (a worker then waits for it)."""


def check(settings: Settings, use: str) -> None:
    """Raise what connecting raised, unless ``use`` tolerates it.

    ``optional``: a server that does not answer is fine (the command works without it);
    ``server``: a missing database is fine, as long as the server answers.
    """
    url = str(settings.database_url)
    try:
        asyncio.run(_probe(url))
    except asyncpg.InvalidCatalogNameError:
        if use != "server":
            raise
        asyncio.run(_probe(maintenance_url(url)))
    except _UNREACHABLE:
        if use != "optional":
            raise


async def _probe(url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=PROBE_TIMEOUT_SECONDS)
    await conn.close()


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or MAINTENANCE_DATABASE


def maintenance_url(url: str) -> str:
    return urlunsplit(urlsplit(asyncpg_dsn(url))._replace(path=f"/{MAINTENANCE_DATABASE}"))


def ensure_database(settings: Settings) -> bool:
    """Create the settings' database if it does not exist; True when it was created."""
    return asyncio.run(_ensure_database(str(settings.database_url)))


async def _ensure_database(url: str) -> bool:
    name = database_name(url)
    conn = await asyncpg.connect(maintenance_url(url), timeout=PROBE_TIMEOUT_SECONDS)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.InsufficientPrivilegeError:
            role = await conn.fetchval("SELECT current_user")
            raise ConfigError(_create_it_yourself(url, role)) from None
        except asyncpg.DuplicateDatabaseError:
            return False  # made meanwhile by someone else: as good
        return True
    finally:
        await conn.close()


def _create_it_yourself(url: str, role: str) -> str:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    name = database_name(url)
    return (
        f"the database {name!r} does not exist on {host}:{port} and the role {role!r} may not "
        f"create it: run `createdb -h {host} -p {port} -U <a role that may> -O {role} {name}` "
        "(or `CREATE DATABASE` as such a role), then `quotagate migrate` again"
    )
