"""Fixtures shared by every test: real Redis and real PostgreSQL, isolated per test.

Where the servers are comes from the environment (QUOTAGATE_TEST_REDIS_URL or
QUOTAGATE_REDIS_URL; QUOTAGATE_TEST_DATABASE_URL or QUOTAGATE_DATABASE_URL naming a server
where we may create databases), falling back to the usual local ports. Each test gets its own
Redis key prefix (deleted afterwards); each test session gets its own database (dropped at the end).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis
from tests.support.secret_watch import WATCH
from tests.support.servers import RedisProcess, env_url, redis_process

from quotagate.config import Config, load_config, parse_config
from quotagate.engine import CreditEngine
from quotagate.ledger import Ledger, upgrade


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger().addHandler(WATCH)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No API key or webhook secret in any log record of the session (see secret_watch)."""
    logging.getLogger().removeHandler(WATCH)
    if WATCH.found:
        print(f"\nsecrets in log records: {sorted(set(WATCH.found))}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


REDIS_URL = env_url(
    "QUOTAGATE_TEST_REDIS_URL", "QUOTAGATE_REDIS_URL", default="redis://127.0.0.1:6379/0"
)
ADMIN_DATABASE_URL = env_url(
    "QUOTAGATE_TEST_DATABASE_URL",
    "QUOTAGATE_DATABASE_URL",
    default="postgresql://postgres@127.0.0.1:5432/postgres",
)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"test{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    client.close()


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


EngineFactory = Callable[..., Awaitable[CreditEngine]]


@pytest.fixture
async def make_engine(redis_url: str, key_prefix: str) -> AsyncIterator[EngineFactory]:
    """Build initialised engines on this test's prefix; ``config`` may be TOML text or a Config."""
    made: list[CreditEngine] = []

    async def factory(config: Config | str | None = None, **kwargs: object) -> CreditEngine:
        if isinstance(config, str):
            config = parse_config(config)
        engine = CreditEngine.from_url(
            str(kwargs.pop("url", redis_url)), config or load_config(), prefix=key_prefix, **kwargs
        )
        made.append(engine)  # closed afterwards even when initialize() raises
        await engine.initialize()
        return engine

    yield factory
    for engine in made:
        await engine.aclose()


@pytest.fixture
async def engine(make_engine: EngineFactory) -> CreditEngine:
    return await make_engine()


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test session (dropped afterwards)."""
    name = f"qg_test_{uuid.uuid4().hex[:10]}"
    admin = ADMIN_DATABASE_URL

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield _with_database(admin, name)
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    """A redis-server of this test's own, for tests that stop, restart or flush it."""
    with redis_process() as server:
        yield server


@pytest.fixture(scope="session")
def ledger_url(database_url: str) -> str:
    """The session's database, migrated to the head revision (shared by the tests)."""
    upgrade(database_url)
    return database_url


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[Ledger]:
    ledger = await Ledger.connect(ledger_url)
    yield ledger
    await ledger.aclose()


@pytest.fixture(scope="session")
def ops_database_url() -> Iterator[str]:
    from tests.jobs.ledger_db import new_database  # it builds on this module

    with new_database() as url:
        yield url


@pytest.fixture
def own_ledger_url(ops_database_url: str) -> str:
    """A migrated ledger database that only this test uses (emptied first)."""
    from tests.jobs.ledger_db import empty

    return empty(ops_database_url)


@pytest.fixture
async def own_ledger(own_ledger_url: str) -> AsyncIterator[Ledger]:
    ledger = await Ledger.connect(own_ledger_url, max_connections=4)
    yield ledger
    await ledger.aclose()
