"""How every command fails: one sentence on stderr and an exit status that says what kind.

    0    done (`reconcile`: the books balance)
    1    the work ran and found a problem: `reconcile` found drift, a `bench` request failed,
         a part of `up` stopped on its own
    2    bad input, configuration or setup: a wrong option or amount, a config that does not
         match the data, a database that does not exist or has no schema yet, a password
         refused
    3    Redis or PostgreSQL did not answer
    4    refused because it would lose data as things stand (`recover` with a full outbox)
    130  interrupted (Ctrl-C)

:func:`translated` turns what redis-py, asyncpg and SQLAlchemy raise when a server is away
or refuses us into quotagate's own errors, naming the server and where its address came
from; :func:`render` turns any of those into the line and the status. Nothing else in the
CLI formats an error.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator

import click

from quotagate.errors import BackendError, ConfigError, QuotagateError
from quotagate.settings import Settings, redact

EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_BACKEND = 3
EXIT_REFUSED = 4
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\b
Exit status:
  0    done (reconcile: the books balance)
  1    the work found a problem (reconcile: drift; bench: failed requests;
       up: a part of the stack stopped)
  2    bad input, configuration or setup (the message says what to change)
  3    Redis or PostgreSQL did not answer
  4    refused: it would lose data as things stand (recover with a full outbox)
  130  interrupted
"""

_NEGATIVE_NUMBER = re.compile(r"^-\d+$")


def where(settings: Settings, name: str) -> str:
    """``redis://127.0.0.1:6379/0 (from QUOTAGATE_REDIS_URL)``: an address, no secret."""
    url = str(getattr(settings, name))
    origin = settings.origins.get(name)
    return f"{redact(url)} ({origin})" if origin else redact(url)


@contextlib.contextmanager
def translated(settings: Settings) -> Iterator[None]:
    """Around work that talks to the backends: their failures as quotagate errors."""
    try:
        yield
    except QuotagateError as exc:
        if not isinstance(exc, BackendError) or exc.__cause__ is None:
            raise
        better = _translate(exc.__cause__, settings)
        if better is None:
            raise
        raise better from exc.__cause__
    except Exception as exc:
        better = _translate(exc, settings)
        if better is None:
            raise
        raise better from exc


def _translate(exc: BaseException, settings: Settings) -> QuotagateError | None:
    import asyncpg
    import redis.exceptions as redis_errors

    from quotagate.errors import BackendUnavailable

    for cause in _chain(exc):
        if isinstance(cause, redis_errors.AuthenticationError):  # before ConnectionError
            return ConfigError(f"{_redis_where(settings, cause)} refused us: {_text(cause)}")
        if isinstance(cause, redis_errors.ConnectionError | redis_errors.TimeoutError):
            return BackendUnavailable(
                f"{_redis_where(settings, cause)} did not answer: {_text(cause)}"
            )
        pg = where(settings, "database_url")
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return ConfigError(
                f"PostgreSQL at {pg} has no database {_database(settings)!r}: "
                "run `quotagate migrate`, which creates it"
            )
        if isinstance(cause, asyncpg.UndefinedTableError):
            return ConfigError(
                f"the ledger database at {pg} has no schema yet: run `quotagate migrate`"
            )
        if isinstance(
            cause, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
        ):
            return ConfigError(f"PostgreSQL at {pg} refused us: {_text(cause)}")
        if isinstance(
            cause,
            ConnectionError
            | socket.gaierror
            | TimeoutError
            | asyncpg.PostgresConnectionError
            | asyncpg.InterfaceError
            | asyncpg.CannotConnectNowError
            | asyncpg.TooManyConnectionsError,
        ):
            return BackendUnavailable(f"PostgreSQL at {pg} did not answer: {_text(cause)}")
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what it wraps (SQLAlchemy's ``orig``), and what caused those."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        todo += [orig if isinstance(orig, BaseException) else None, current.__cause__]
        todo.append(current.__context__)


def _redis_where(settings: Settings, cause: BaseException) -> str:
    """Which Redis failed: the one whose address redis-py names, or both if it names none."""
    data, queue = where(settings, "redis_url"), where(settings, "queue_url")
    if settings.queue_url == settings.redis_url:
        return f"Redis at {data}"
    for label, name, text in (
        ("Redis", "redis_url", data),
        ("The queue Redis", "queue_url", queue),
    ):
        if any(address in str(cause) for address in _addresses(str(getattr(settings, name)))):
            return f"{label} at {text}"
    return f"Redis at {data} or the queue Redis at {queue}"


def _addresses(url: str) -> list[str]:
    """The ``host:port`` a Redis URL names (every seed node of a cluster's)."""
    from urllib.parse import urlsplit

    from quotagate.engine.connection import is_cluster_url, seed_nodes

    if is_cluster_url(url):
        return [f"{host}:{port}" for host, port in seed_nodes(url)]
    parts = urlsplit(url)
    return [f"{parts.hostname}:{parts.port or 6379}"]


def _database(settings: Settings) -> str:
    from urllib.parse import urlsplit

    return urlsplit(str(settings.database_url)).path.lstrip("/") or "postgres"


def _text(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact(text if len(text) < 300 else text[:300] + "...")


def render(exc: BaseException) -> tuple[str, int] | None:
    """The one line and the exit status for ``exc``; None when it is not ours to render
    (a bug: its traceback is worth more than a sentence)."""
    if isinstance(exc, click.exceptions.Abort | KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(exc, click.UsageError):
        return _usage(exc), EXIT_INPUT
    if isinstance(exc, click.ClickException):
        return exc.format_message(), exc.exit_code
    if isinstance(exc, QuotagateError):
        return exc.detail, EXIT_BACKEND if isinstance(exc, BackendError) else EXIT_INPUT
    return None


def _usage(exc: click.UsageError) -> str:
    command = exc.ctx.command_path if exc.ctx is not None else "quotagate"
    message = exc.format_message()
    option = exc.option_name if isinstance(exc, click.NoSuchOption) else ""
    if _NEGATIVE_NUMBER.match(option) and command.endswith(" grant"):
        message = (
            f"{option} reads as an option: a negative amount is an adjustment and goes "
            f"after `--`: `{command} --type adjust ACCOUNT_ID -- {option}`"
        )
    return f"{message} (see `{command} --help`)"
