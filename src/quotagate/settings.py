"""Settings from the environment, read once, checked, with secrets kept out of logs.

Each setting's default is written once, on its field of :class:`Settings`; ``from_env`` takes
what the environment does not set from there. docs/configuration.md lists every setting with
its default (a test holds the two together). Connection URLs that hold a password are wrapped
in :class:`Secret`, whose repr hides it.

:meth:`Settings.locate` is what the CLI reads: the environment, or, when it names no Redis and
no PostgreSQL, the stack file of a running `quotagate up` (see quotagate.embedded.stackfile);
each URL remembers where it came from, so a command can say what it talks to.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit, urlunsplit

from quotagate.config import Config, load_config
from quotagate.engine.connection import DEFAULT_MAX_CONNECTIONS, is_cluster_url
from quotagate.engine.keys import DEFAULT_PREFIX
from quotagate.errors import ConfigError
from quotagate.logs import LOG_FORMATS, LOG_LEVELS, LogFormat, LogLevel

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/quotagate"

DEFAULT_FLUSH_BATCH_SIZE = 10_000
"""Outbox entries per flush batch: one COPY, one snapshot upsert, one commit. Each batch updates
one snapshot row per account in it and commits once: larger batches share both among more rows
(docs/ledger.md has the measurements)."""

DEFAULT_FLUSH_LEASE_SECONDS = 15
"""How long a flush may hold its partition without renewing (it renews every batch). After a
worker dies, its partition waits at most this long for another flush."""


class Secret(str):
    """A string whose repr masks any password (URLs) or the whole value."""

    def __repr__(self) -> str:
        return f"Secret({redact(self)!r})"


class SecretValue(str):
    """A secret that is not a URL (a signing secret): its repr shows none of it."""

    def __repr__(self) -> str:
        return "SecretValue('***')"


MIN_JWT_SECRET_BYTES = 32
"""An HMAC secret shorter than the hash it keys (256 bits for HS256) is weaker than the hash:
RFC 7518 section 3.2 asks for at least that much."""


def _jwt_secret(env: Mapping[str, str]) -> SecretValue | None:
    raw = env.get("QUOTAGATE_JWT_SECRET")
    if not raw:
        return None
    if len(raw.encode()) < MIN_JWT_SECRET_BYTES:
        raise ConfigError(
            f"QUOTAGATE_JWT_SECRET: give at least {MIN_JWT_SECRET_BYTES} bytes "
            "(e.g. `openssl rand -base64 48`)"
        )
    return SecretValue(raw)


def redact(url: str) -> str:
    """The URL with its password replaced by ***, safe to print."""
    url = str(url)  # a plain str: a Secret's repr calls this
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _int_env(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ConfigError(f"{name}: {raw!r} is not an integer from {low} to {high}")
    return int(raw)


def _choice_env(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    raw = env.get(name)
    if not raw:
        return None
    if raw.lower() not in choices:
        raise ConfigError(f"{name}: {raw!r} is not one of {', '.join(choices)}")
    return raw.lower()


def _cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


MAX_WORKERS = 64
"""Most gateway processes one `quotagate serve` runs."""


def default_workers() -> int:
    """One gateway process per core this process may use (the gateway is CPU-bound)."""
    return min(_cores(), MAX_WORKERS)


_URL_VARIABLES = {
    "redis_url": "QUOTAGATE_REDIS_URL",
    "queue_url": "QUOTAGATE_QUEUE_URL",
    "database_url": "QUOTAGATE_DATABASE_URL",
}


def default_data_dir() -> Path:
    """Where `quotagate up` keeps its data: ``~/.local/share/quotagate``, or root's."""
    from quotagate.embedded.datadir import default_data_dir as platform_default

    return platform_default()


_DEFAULT_REDIS = Secret(DEFAULT_REDIS_URL)
_DEFAULT_DATABASE = Secret(DEFAULT_DATABASE_URL)


@dataclass(frozen=True)
class Settings:
    redis_url: Secret = _DEFAULT_REDIS
    """QUOTAGATE_REDIS_URL: the credit data (accounts, holds, outboxes)."""
    queue_url: Secret = _DEFAULT_REDIS
    """QUOTAGATE_QUEUE_URL: the RQ queues; a standalone Redis. Defaults to QUOTAGATE_REDIS_URL."""
    database_url: Secret = _DEFAULT_DATABASE
    """QUOTAGATE_DATABASE_URL: the durable ledger (PostgreSQL)."""
    config_path: str | None = None
    """QUOTAGATE_CONFIG: the TOML config file; the shipped default when unset."""
    key_prefix: str = DEFAULT_PREFIX
    """QUOTAGATE_KEY_PREFIX: prefix of every Redis key."""
    host: str = "127.0.0.1"
    """QUOTAGATE_HOST: the address `quotagate serve` listens on."""
    port: int = 8080
    """QUOTAGATE_PORT: the port `quotagate serve` listens on."""
    workers: int = field(default_factory=default_workers)
    """QUOTAGATE_WORKERS: gateway processes `quotagate serve` runs (uvicorn workers)."""
    flush_batch_size: int = DEFAULT_FLUSH_BATCH_SIZE
    """QUOTAGATE_FLUSH_BATCH: outbox entries per flush batch (one COPY, one commit)."""
    flush_lease_seconds: int = DEFAULT_FLUSH_LEASE_SECONDS
    """QUOTAGATE_FLUSH_LEASE_SECONDS: a partition's flush lease; after a worker dies its
    partition waits at most this long for another flush."""
    flush_trigger_entries: int = 5000
    """QUOTAGATE_FLUSH_TRIGGER_ENTRIES: outbox length past which the gateway enqueues a flush
    early, before the next scheduled one."""
    redis_max_connections: int = DEFAULT_MAX_CONNECTIONS
    """QUOTAGATE_REDIS_MAX_CONNECTIONS: on a Redis Cluster, the connections a worker's jobs
    and an operator's commands open to each node; on one Redis, those of the commands' pool.
    Calls past them wait for a free one."""
    jwt_secret: SecretValue | None = None
    """QUOTAGATE_JWT_SECRET: the HMAC secret of clients' tokens, when ``[identity.jwt]`` uses
    HS256/384/512 (public keys go in the config file)."""
    log_format: LogFormat | None = None
    """QUOTAGATE_LOG_FORMAT: json, logfmt or text, for `serve`, `worker` and `scheduler`; the
    config file's ``[logs] format`` when unset."""
    log_level: LogLevel | None = None
    """QUOTAGATE_LOG_LEVEL: debug, info (an access line per request), warning, error or
    critical; the config file's ``[logs] level`` when unset."""
    data_dir: Path | None = None
    """QUOTAGATE_DATA_DIR: the data directory of `quotagate up`; the platform's when unset."""
    explicit: frozenset[str] = field(default_factory=frozenset)
    """Which of redis_url, database_url were set in the environment (``up`` embeds the rest)."""
    origins: Mapping[str, str] = field(default_factory=dict)
    """Where redis_url, queue_url and database_url came from, in words (set by locate)."""
    stack_file: Path | None = None
    """The stack file of the running `quotagate up` these settings came from, if any."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        default = cls()
        redis_url = env.get("QUOTAGATE_REDIS_URL") or default.redis_url
        database_url = env.get("QUOTAGATE_DATABASE_URL") or default.database_url
        if is_cluster_url(redis_url) and not env.get("QUOTAGATE_QUEUE_URL"):
            raise ConfigError(
                "QUOTAGATE_QUEUE_URL must name a standalone Redis for the job queues when "
                "QUOTAGATE_REDIS_URL is a Redis Cluster (RQ does not run on a cluster)"
            )
        for name, url, schemes in (
            (
                "QUOTAGATE_REDIS_URL",
                redis_url,
                ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"),
            ),
            (
                "QUOTAGATE_QUEUE_URL",
                env.get("QUOTAGATE_QUEUE_URL") or redis_url,
                ("redis", "rediss", "unix"),
            ),
            (
                "QUOTAGATE_DATABASE_URL",
                database_url,
                ("postgresql", "postgres", "postgresql+asyncpg"),
            ),
        ):
            scheme = urlsplit(url).scheme
            if scheme not in schemes:
                raise ConfigError(
                    f"{name}: {redact(url)!r} is not a {' / '.join(s + '://' for s in schemes)} URL"
                )
        explicit = frozenset(
            name
            for name, var in (
                ("redis_url", "QUOTAGATE_REDIS_URL"),
                ("database_url", "QUOTAGATE_DATABASE_URL"),
            )
            if env.get(var)
        )
        return cls(
            redis_url=Secret(redis_url),
            queue_url=Secret(env.get("QUOTAGATE_QUEUE_URL") or redis_url),
            database_url=Secret(database_url),
            config_path=env.get("QUOTAGATE_CONFIG") or None,
            key_prefix=env.get("QUOTAGATE_KEY_PREFIX") or default.key_prefix,
            host=env.get("QUOTAGATE_HOST") or default.host,
            port=_int_env(env, "QUOTAGATE_PORT", default.port, 1, 65535),
            workers=_int_env(env, "QUOTAGATE_WORKERS", default.workers, 1, MAX_WORKERS),
            flush_batch_size=_int_env(
                env, "QUOTAGATE_FLUSH_BATCH", default.flush_batch_size, 1, 50_000
            ),
            flush_lease_seconds=_int_env(
                env, "QUOTAGATE_FLUSH_LEASE_SECONDS", default.flush_lease_seconds, 1, 3600
            ),
            flush_trigger_entries=_int_env(
                env, "QUOTAGATE_FLUSH_TRIGGER_ENTRIES", default.flush_trigger_entries, 1, 10**7
            ),
            redis_max_connections=_int_env(
                env, "QUOTAGATE_REDIS_MAX_CONNECTIONS", default.redis_max_connections, 1, 10_000
            ),
            jwt_secret=_jwt_secret(env),
            log_format=cast(
                "LogFormat | None", _choice_env(env, "QUOTAGATE_LOG_FORMAT", LOG_FORMATS)
            ),
            log_level=cast("LogLevel | None", _choice_env(env, "QUOTAGATE_LOG_LEVEL", LOG_LEVELS)),
            data_dir=Path(env["QUOTAGATE_DATA_DIR"]) if env.get("QUOTAGATE_DATA_DIR") else None,
            explicit=explicit,
        )

    @classmethod
    def locate(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings a command uses: the environment's, or a running `up`'s.

        The stack file stands in for the connection variables only when none of them is
        set (half of one deployment and half of another is never what anyone meant); its
        key prefix and config file then apply where the environment sets none.
        """
        from quotagate.embedded.stackfile import read_record, stack_file

        env = os.environ if env is None else env
        if any(env.get(var) for var in _URL_VARIABLES.values()):
            return replace(cls.from_env(env), origins=_env_origins(env, ""))
        path = stack_file(Path(env.get("QUOTAGATE_DATA_DIR") or default_data_dir()))
        record = read_record(path)
        if record is not None and record.running():
            stacked = {**record.environment(), **{k: v for k, v in env.items() if v}}
            where = f"from the stack file {path} of `quotagate up` (pid {record.pid})"
            origins = dict.fromkeys(_URL_VARIABLES, where)
            settings = cls.from_env(stacked)
            return replace(settings, explicit=frozenset(), origins=origins, stack_file=path)
        why = " and no `quotagate up` is running"
        if record is not None:
            why = f"; the stack file {path} is left from a `quotagate up` that is not running"
        return replace(cls.from_env(env), origins=_env_origins(env, why))

    def environment(self) -> dict[str, str]:
        """The connection settings as variables, for processes this one starts."""
        env = {
            "QUOTAGATE_REDIS_URL": str(self.redis_url),
            "QUOTAGATE_QUEUE_URL": str(self.queue_url),
            "QUOTAGATE_DATABASE_URL": str(self.database_url),
            "QUOTAGATE_KEY_PREFIX": self.key_prefix,
        }
        if self.config_path:
            env["QUOTAGATE_CONFIG"] = self.config_path
        return env

    def load_config(self) -> Config:
        return load_config(self.config_path)

    def logging(self, config: Config) -> tuple[LogFormat, LogLevel]:
        """The log format and level: the environment's, else the config file's ``[logs]``."""
        return self.log_format or config.logs.format, self.log_level or config.logs.level


def _env_origins(env: Mapping[str, str], why_default: str) -> dict[str, str]:
    """Where each URL came from when the environment is all there is."""
    origins = {}
    for name, var in _URL_VARIABLES.items():
        if env.get(var):
            origins[name] = f"from {var}"
        elif name == "queue_url":
            origins[name] = f"{origins['redis_url']}, as QUOTAGATE_QUEUE_URL is not set"
        else:
            origins[name] = f"the default address: {var} is not set{why_default}"
    return origins
