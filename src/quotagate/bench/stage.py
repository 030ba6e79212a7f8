"""What the benchmark sets up and always takes down: its own Redis key prefix, its own database,
its own config file, and the accounts it charges.

Nothing outside that prefix and that database is read or written, so a benchmark can run on a
Redis and a Postgres that hold other data (or other engineers' tests).
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis
from rq import Queue
from rq.job import Job

from quotagate.bench.load import Accounts
from quotagate.config import Config, parse_config
from quotagate.engine import CreditEngine
from quotagate.engine.connection import redis_from_url
from quotagate.engine.keys import all_keys_pattern
from quotagate.jobs import queues

CREDITS = 10**12
"""What every benchmark account holds: no run comes near spending it, so no charge is refused."""

BENCH_CONFIG = f"""
# quotagate bench: one tier without a rate limit, so that the load measures the charge itself.
partitions = 64
default_tier = "bench"
opening_grant = true

[resources]
api_call = 1

[tiers.bench]
credit_limit = {CREDITS}
monthly_grant = {CREDITS}
renewal = "add"

[holds]
min_ttl_seconds = 1

[authz]
unmatched = "allow"

# hook/reserve: holds of 1 credit that end by themselves a second later (the run sweeps them).
[[authz.routes]]
method = "*"
path = "/reserve/*"
mode = "reserve"
resource = "api_call"
hold_ttl = 1

# hook/shadow: the charge decided and recorded in the shadow stream, nothing charged.
[[authz.routes]]
method = "*"
path = "/shadow/*"
resource = "api_call"
shadow = true

[[authz.routes]]
method = "*"
path = "/api/*"
resource = "api_call"
"""

HOT = Accounts("bench-hot")


def spread_accounts(count: int) -> Accounts:
    return Accounts("bench-", count)


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database of the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def asyncpg_url(url: str) -> str:
    """asyncpg takes postgresql:// only (settings also accept SQLAlchemy's +asyncpg form)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@dataclass
class Stage:
    """The benchmark's own corner of the Redis and the Postgres it was given."""

    redis_url: str
    server_database_url: str
    """A database of the Postgres server where we may CREATE DATABASE."""
    queue_url: str | None = None
    """The standalone Redis of the queues when ``redis_url`` is a cluster's (RQ does not run
    on a cluster); None: the queues are on ``redis_url``."""
    prefix: str = field(default_factory=lambda: f"qgbench{uuid.uuid4().hex[:8]}")
    database: str = field(default_factory=lambda: f"qg_bench_{uuid.uuid4().hex[:10]}")
    config: Config = field(default_factory=lambda: parse_config(BENCH_CONFIG, "bench config"))
    config_path: Path | None = None
    engine: CreditEngine | None = None
    migrated: bool = False
    """The database carries the ledger's schema (``quotagate migrate`` ran)."""
    _database_created: bool = False

    @property
    def database_url(self) -> str:
        return with_database(self.server_database_url, self.database)

    @property
    def env(self) -> dict[str, str]:
        """The environment that points a quotagate process at this stage."""
        assert self.config_path is not None
        return {
            "QUOTAGATE_REDIS_URL": self.redis_url,
            "QUOTAGATE_QUEUE_URL": self.queue_url or self.redis_url,
            "QUOTAGATE_DATABASE_URL": self.database_url,
            "QUOTAGATE_KEY_PREFIX": self.prefix,
            "QUOTAGATE_CONFIG": str(self.config_path),
        }

    async def open(self) -> CreditEngine:
        """Create the database and the config file; an initialised engine on our prefix."""
        await _admin(self.server_database_url, f'CREATE DATABASE "{self.database}"')
        self._database_created = True
        with tempfile.NamedTemporaryFile("w", prefix="qgbench-", suffix=".toml", delete=False) as f:
            f.write(BENCH_CONFIG)
        self.config_path = Path(f.name)
        self.engine = CreditEngine.from_url(self.redis_url, self.config, prefix=self.prefix)
        await self.engine.initialize()
        return self.engine

    async def create_accounts(self, accounts: Accounts, chunk: int = 2000) -> None:
        """Open ``accounts`` in Redis through the engine, each with CREDITS."""
        assert self.engine is not None
        names = accounts.all()
        for i in range(0, len(names), chunk):
            await asyncio.gather(*(self.engine.upsert_account(a) for a in names[i : i + chunk]))

    async def clear_outboxes(self) -> None:
        """Drop the outbox and shadow entries the load made: they would only fill memory until
        the end."""
        assert self.engine is not None
        keys = [self.engine.keys.outbox(p) for p in range(self.config.partitions)]
        keys += [self.engine.keys.shadow(p) for p in range(self.config.partitions)]
        await self.engine.redis.delete(*keys)

    async def close(self) -> None:
        """Delete every key under our prefix, drop our database, remove the config file."""
        try:
            await _delete_prefix(self.redis_url, self.queue_url or self.redis_url, self.prefix)
        finally:
            if self.engine is not None:
                await self.engine.aclose()
            if self._database_created:
                await _admin(
                    self.server_database_url,
                    f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)',
                )
            if self.config_path is not None:
                self.config_path.unlink(missing_ok=True)


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def server_database_url(database_url: str) -> str:
    """A database of the server of ``database_url`` to create ours from: that one if it
    exists, else the server's ``postgres`` database."""
    try:
        conn = await asyncpg.connect(asyncpg_url(database_url))
    except asyncpg.InvalidCatalogNameError:
        return with_database(database_url, "postgres")
    await conn.close()
    return database_url


async def _delete_prefix(redis_url: str, queue_url: str, prefix: str) -> None:
    """Every key under ``prefix`` (on every master of a cluster), and the run's queues."""
    client = redis_from_url(redis_url)
    try:
        batch: list[str] = []
        async for key in client.scan_iter(match=all_keys_pattern(prefix), count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()
    queue_client = aioredis.Redis.from_url(queue_url)
    try:
        await _delete_queues(queue_client, prefix)
    finally:
        await queue_client.aclose()


async def _delete_queues(client: aioredis.Redis, prefix: str) -> None:
    """RQ's keys for the run's queues (``rq:queue:<prefix>:...`` and their jobs), should a
    flush have been queued after all: RQ's keys do not start with our prefix."""
    for name in (queues.flush_queue_name(prefix), queues.jobs_queue_name(prefix)):
        queue = Queue.redis_queue_namespace_prefix + name
        job_ids = await client.lrange(queue, 0, -1)
        jobs = [Job.redis_job_namespace_prefix + _text(job_id) for job_id in job_ids]
        await client.unlink(queue, *jobs)
        await client.srem(Queue.redis_queues_keys, queue)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
