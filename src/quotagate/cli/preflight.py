"""What every command goes through before its own work, in one place.

1. Find the stack: the environment, or the stack file of a running `quotagate up`
   (:meth:`Settings.locate`). What the stack file provides is put in this process's
   environment, so the processes a command starts (gateway workers, jobs) see the same.
2. Read the config file (a mistake stops here, in one sentence).
3. Check that the backends the command needs answer: the credit Redis, whose partition
   layout must match the config's (a command on the wrong count would read and write
   accounts in the wrong partitions); the queue Redis; PostgreSQL and its database.
4. Say, to a person (stderr on a terminal, as the progress bars), which Redis and
   PostgreSQL it talks to, and where that came from.

Every command is listed in :data:`NEEDS`; registering one that is not is an error, so no
command skips these checks by being forgotten.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import click

from quotagate.cli import pgserver
from quotagate.cli.failures import translated, where
from quotagate.errors import ConfigError
from quotagate.settings import Settings

Use = Literal["required", "optional"]
"""required: must answer before the command starts. optional: shown, and used if it answers
(for PostgreSQL, a database that does not exist is still an error)."""

PostgresUse = Literal["required", "optional", "server"]
"""server: the server must answer; the database may not exist yet (`migrate` creates it)."""

REDIS_CHECK_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class Needs:
    redis: Use | None = None
    queue: Use | None = None
    postgres: PostgresUse | None = None
    layout: bool = True
    """Check the partition layout (when the Redis is required): off for work under a key
    prefix of its own."""
    announce: bool = True
    """Say where it points, to a person (`env` and `up` print their own)."""


_DATA_AND_LEDGER = Needs(redis="required", postgres="required")
_DATA = Needs(redis="required")
_LEDGER = Needs(postgres="required", redis="optional")  # keys: Redis gets a copy if it answers

NEEDS: Mapping[str, Needs] = {
    "accounts create": _DATA_AND_LEDGER,
    "accounts update": _DATA_AND_LEDGER,
    "accounts show": _DATA,
    "accounts list": _DATA_AND_LEDGER,
    "accounts grant": _DATA_AND_LEDGER,
    "accounts grants": _DATA,
    "accounts void-grant": _DATA_AND_LEDGER,
    "grant": _DATA_AND_LEDGER,
    "history": _DATA_AND_LEDGER,
    "usage": _DATA_AND_LEDGER,
    "shadow report": _DATA_AND_LEDGER,
    "shadow reset": _DATA,
    "alerts": Needs(postgres="required"),
    "webhooks deliveries": Needs(postgres="required"),
    "webhooks redeliver": Needs(postgres="required"),
    # Its own key prefix and database: the servers must answer, their data is not its business.
    "bench": Needs(redis="required", postgres="server", layout=False),
    "env": Needs(announce=False),
    "keys create": _LEDGER,
    "keys list": Needs(postgres="required"),
    "keys revoke": _LEDGER,
    "migrate": Needs(postgres="server"),
    # A worker waits for a PostgreSQL that is down (`--burst` stops on it, in the command).
    "worker": Needs(redis="required", queue="required", postgres="optional"),
    "flush": _DATA_AND_LEDGER,
    "status": Needs(redis="required", postgres="optional"),
    "renew": Needs(redis="required", queue="optional"),
    "reconcile": _DATA_AND_LEDGER,
    "recover": _DATA_AND_LEDGER,
    "expire-holds": _DATA,
    # The scheduler only enqueues, and waits out a queue Redis that is away on its own.
    "scheduler": Needs(queue="optional"),
    "serve": Needs(redis="required", postgres="optional"),
    "up": Needs(announce=False),
}


def guard(path: str, callback: Callable[..., Any]) -> Callable[..., Any]:
    """``callback`` with the checks above run first, and its backend failures translated."""
    if path not in NEEDS:
        raise RuntimeError(f"`quotagate {path}` is missing from quotagate.cli.preflight.NEEDS")
    needs = NEEDS[path]

    @functools.wraps(callback)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        settings = prepare(needs)
        shown = announcement(settings, needs)
        # For people, like the progress bars: stdout stays the command's data, and what a
        # script reads on stderr stays the one line of an error.
        if needs.announce and shown and not kwargs.get("as_json") and sys.stderr.isatty():
            click.echo(shown, err=True)
        with translated(settings):
            return callback(*args, **kwargs)

    return guarded


def prepare(needs: Needs) -> Settings:
    """Locate the stack, read the config, and check what ``needs`` asks for."""
    settings = Settings.locate()
    if not (needs.redis or needs.queue or needs.postgres):
        return settings  # `up` and `env` read the environment and the stack file themselves
    if settings.stack_file is not None:
        for name, value in settings.environment().items():
            os.environ.setdefault(name, value)  # for the processes the command starts
    with translated(settings):
        config = settings.load_config()
        if needs.redis == "required" and needs.layout:
            check_layout(settings, config.partitions)
        elif needs.redis == "required":
            _ping(str(settings.redis_url))
        if needs.queue == "required" and settings.queue_url != settings.redis_url:
            _ping(str(settings.queue_url))
        if needs.postgres is not None:
            pgserver.check(settings, needs.postgres)
    return settings


def check_layout(settings: Settings, partitions: int) -> None:
    """ConfigError unless the credit Redis is empty or laid out in ``partitions``."""
    from quotagate.engine.connection import sync_redis_from_url
    from quotagate.engine.keys import KeySpace

    client = sync_redis_from_url(
        str(settings.redis_url), timeout_seconds=REDIS_CHECK_TIMEOUT_SECONDS
    )
    try:
        recorded = client.hget(KeySpace(settings.key_prefix, partitions).meta, "partitions")
    finally:
        client.close()
    if recorded is not None and int(recorded) != partitions:
        raise ConfigError(
            f"config: partitions = {partitions}, but the Redis at {where(settings, 'redis_url')} "
            f"holds data laid out in {int(recorded)} partitions; use that number"
        )


def _ping(url: str) -> None:
    from quotagate.engine.connection import sync_redis_from_url

    client = sync_redis_from_url(url, timeout_seconds=REDIS_CHECK_TIMEOUT_SECONDS)
    try:
        client.ping()
    finally:
        client.close()


def announcement(settings: Settings, needs: Needs) -> str:
    """Which Redis and PostgreSQL a command talks to, without secrets, and why those."""
    shown = []
    if needs.redis is not None:
        shown.append(("Redis", "redis_url"))
    separate_queue = needs.redis is None or settings.queue_url != settings.redis_url
    if needs.queue is not None and separate_queue:
        shown.append(("the queue Redis", "queue_url"))
    if needs.postgres is not None:
        shown.append(("PostgreSQL", "database_url"))
    return "\n".join(f"using {label} at {where(settings, name)}" for label, name in shown)
