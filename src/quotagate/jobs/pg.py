"""The ledger as the operations open it, and their own few statements on its pool.

Operations read the ledger in bulk (a cursor over ``user_credits``) and, for repairs, write
adjust rows in the ledger's tables; they go through :class:`quotagate.ledger.Ledger`'s pool,
and turn a failure of PostgreSQL itself into BackendUnavailable, like the ledger does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from quotagate.errors import BackendUnavailable
from quotagate.ledger import Ledger
from quotagate.ledger.postgres import UNAVAILABLE, describe

MAX_CONNECTIONS = 4
"""Connections the operations open to PostgreSQL: their work is a few large statements."""


@asynccontextmanager
async def open_ledger(database_url: str) -> AsyncIterator[Ledger]:
    """The ledger, on a schema that is current (ConfigError naming `quotagate migrate`)."""
    ledger = await Ledger.connect(database_url, max_connections=MAX_CONNECTIONS)
    try:
        await ledger.ensure_current()
        yield ledger
    finally:
        await ledger.aclose()


@contextmanager
def postgres_errors() -> Iterator[None]:
    """Around direct use of the pool: a server that is down becomes BackendUnavailable."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise BackendUnavailable(f"PostgreSQL did not answer: {describe(exc)}") from exc
