"""The connection pool and the failures that mean "PostgreSQL is not there".

One asyncpg pool per process; every unit of work is one transaction, retried when the
failure says the work may simply be run again: a deadlock or serialization failure, or a
connection that died (a pooled connection after a server restart). Re-running is always
safe here: everything the ledger writes is idempotent (ON CONFLICT on transaction ids,
account events guarded by their outbox position).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import asyncpg

from quotagate.errors import BackendUnavailable
from quotagate.ledger.urls import asyncpg_dsn

T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 5.0
"""How long opening a connection may take before we call PostgreSQL unreachable."""

ACQUIRE_TIMEOUT_SECONDS = 10.0
"""How long a unit of work waits for a pooled connection."""

COMMAND_TIMEOUT_SECONDS = 60.0
"""Upper bound of one statement: a flush batch of thousands of rows takes milliseconds."""

UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)
"""Failures of the server or of the way to it, not of our statements."""

RETRY_ROLLBACK = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)

ROLLBACK_ATTEMPTS = 4
CONNECTION_ATTEMPTS = 3
"""A pool may hold a few connections that a restart killed; each attempt drops one."""

Isolation = Literal["read_committed", "repeatable_read", "serializable"]


def describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


async def create_pool(database_url: str, max_connections: int) -> asyncpg.Pool:
    """A pool that connects lazily: creating it never fails because the server is down."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn=asyncpg_dsn(database_url),
        min_size=0,
        max_size=max_connections,
        timeout=CONNECT_TIMEOUT_SECONDS,
        command_timeout=COMMAND_TIMEOUT_SECONDS,
    )
    return pool


async def in_transaction(
    pool: asyncpg.Pool,
    work: Callable[[asyncpg.Connection], Awaitable[T]],
    *,
    isolation: Isolation = "read_committed",
    readonly: bool = False,
) -> T:
    """Run ``work`` in one transaction; BackendUnavailable when PostgreSQL cannot do it."""
    rollbacks = failures = 0
    while True:
        try:
            async with (
                pool.acquire(timeout=ACQUIRE_TIMEOUT_SECONDS) as conn,
                conn.transaction(isolation=isolation, readonly=readonly),
            ):
                return await work(conn)
        except RETRY_ROLLBACK as exc:
            rollbacks += 1
            if rollbacks >= ROLLBACK_ATTEMPTS:
                raise BackendUnavailable(f"PostgreSQL kept aborting: {describe(exc)}") from exc
        except UNAVAILABLE as exc:
            failures += 1
            if failures >= CONNECTION_ATTEMPTS:
                raise BackendUnavailable(f"PostgreSQL did not answer: {describe(exc)}") from exc
