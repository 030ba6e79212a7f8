"""The CLI's connections to Redis and PostgreSQL, opened in one place.

A command's body is an async function of :class:`Backends`, run by :func:`run`, which opens
what the command asks for and closes it afterwards:

    the engine                  always; it connects to Redis on first use, and does not start
                                up (see quotagate.jobs.backends): ``ready_engine`` does that
    ledger="current"            the ledger, on a schema this version knows (a ConfigError that
                                names `quotagate migrate` otherwise)
    ledger="unchecked"          the ledger's pool, unchecked: for a command that carries on
                                without PostgreSQL (`status`)
    ledger=None                 no ledger
    keys=True                   the API key store

Which servers these are was settled before the command ran: the preflight
(quotagate.cli.preflight) found the stack, put what its stack file gives in the environment,
checked the servers and said which ones they are, so the settings read here are the ones shown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Literal, TypeVar

from redis import exceptions as redis_errors

from quotagate.auth.store import KeyStore
from quotagate.engine import CreditEngine
from quotagate.errors import BackendUnavailable
from quotagate.jobs.backends import open_engine
from quotagate.jobs.pg import MAX_CONNECTIONS, open_ledger, postgres_errors
from quotagate.ledger import Ledger
from quotagate.settings import Settings

T = TypeVar("T")

LedgerUse = Literal["current", "unchecked"]


@dataclass(frozen=True)
class Backends:
    """What a command's body works with: the settings and the connections it asked for."""

    settings: Settings
    engine: CreditEngine
    ledger: Ledger | None
    """None unless asked for."""
    keys: KeyStore | None
    """None unless asked for."""


@asynccontextmanager
async def backends(
    *, ledger: LedgerUse | None = "current", keys: bool = False
) -> AsyncIterator[Backends]:
    """The connections a command asked for, closed when it is done (see the module docstring)."""
    settings = Settings.from_env()
    settings.load_config()  # a bad config file fails here, in one sentence
    async with AsyncExitStack() as stack:
        engine = await stack.enter_async_context(open_engine(settings))
        opened = None
        if ledger == "current":
            opened = await stack.enter_async_context(open_ledger(settings.database_url))
        elif ledger == "unchecked":
            opened = await Ledger.connect(
                str(settings.database_url), max_connections=MAX_CONNECTIONS
            )
            stack.push_async_callback(opened.aclose)
        store = None
        if keys:
            store = KeyStore(settings.database_url)
            stack.push_async_callback(store.aclose)
        yield Backends(settings, engine, opened, store)


def run(
    work: Callable[[Backends], Awaitable[T]],
    *,
    ledger: LedgerUse | None = "current",
    keys: bool = False,
) -> T:
    """Run a command's async body with the backends it asks for; Redis failing outside the
    engine's scripts (SCAN, reads) is reported like the engine reports it: BackendUnavailable,
    one sentence, exit 3."""

    async def main() -> T:
        async with backends(ledger=ledger, keys=keys) as opened:
            return await work(opened)

    try:
        return asyncio.run(main())
    except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
        raise BackendUnavailable(f"Redis did not answer: {exc}") from exc


async def ready_engine(b: Backends) -> CreditEngine:
    """The engine with its tier tables and scripts in Redis, for commands that write.

    A Redis found empty is opened as new only when the ledger has no accounts: otherwise it
    lost its data, and charges stay refused until `quotagate recover`.
    """
    fresh_ok = True
    if b.ledger is not None:
        with postgres_errors():
            async with b.ledger.pool.acquire() as conn:
                fresh_ok = not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM user_credits)")
    await b.engine.initialize(allow_fresh=fresh_ok)
    return b.engine
