"""What the operators' commands share: opening the backends, progress, exit codes, printing.

Exit codes (every operations command):

    0  done; for `reconcile`, the books balance
    1  `reconcile`: the books do not balance (the drifts are printed)
    2  bad input or configuration (one sentence on stderr)
    3  a backend (Redis, PostgreSQL) did not answer
    4  refused: the command would lose data as things stand (`recover` with a full outbox)
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import click
from redis import exceptions as redis_errors

from quotagate.cli.failures import EXIT_FAILED
from quotagate.engine import CreditEngine
from quotagate.errors import BackendUnavailable
from quotagate.jobs.backends import open_engine
from quotagate.jobs.pg import open_ledger, postgres_errors
from quotagate.ledger import Ledger
from quotagate.settings import Settings

T = TypeVar("T")

# Reconciliation that found drift is work that ran and found a problem.
EXIT_DRIFT = EXIT_FAILED

json_option = click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")


@dataclass
class Backends:
    settings: Settings
    engine: CreditEngine
    ledger: Ledger | None


@asynccontextmanager
async def backends(*, database: bool = True) -> AsyncIterator[Backends]:
    """The engine (no start-up: see quotagate.jobs.backends) and, if asked, the ledger on a
    schema that is current."""
    settings = Settings.from_env()
    settings.load_config()  # a bad config file fails here, in one sentence
    async with open_engine(settings) as engine:
        if not database:
            yield Backends(settings, engine, None)
            return
        async with open_ledger(settings.database_url) as ledger:
            yield Backends(settings, engine, ledger)


def run(work: Callable[[Backends], Awaitable[T]], *, database: bool = True) -> T:
    """Run a command's async body; Redis failing outside the engine's scripts (SCAN, reads)
    is reported like the engine reports it: BackendUnavailable, one sentence, exit 3."""

    async def main() -> T:
        async with backends(database=database) as b:
            return await work(b)

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


class Progress:
    """A progress bar on stderr for people; nothing at all for scripts (--json) or pipes."""

    def __init__(self, bar: Any | None) -> None:
        self._bar = bar

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)


@contextmanager
def progress(length: int | None, label: str, *, hidden: bool) -> Iterator[Progress]:
    if hidden or not sys.stderr.isatty():
        yield Progress(None)
        return
    bar: Any = click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True)
    with bar:
        yield Progress(bar)


def fields(values: Mapping[str, Any]) -> str:
    """``name  value`` lines, aligned: one record for people."""
    width = max(len(k) for k in values)
    return "\n".join(f"{k.ljust(width)}  {_text(v)}" for k, v in values.items())


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def fail(message: str, code: int) -> None:
    """One sentence on stderr, and the exit status that says what kind of failure it was."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)  # not click's Exit: `quotagate` runs click in non-standalone mode
