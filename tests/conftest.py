"""Fixtures shared by every test: real Redis and real PostgreSQL, isolated per test.

Where the servers are comes from the environment (QUOTAGATE_TEST_REDIS_URL or
QUOTAGATE_REDIS_URL; QUOTAGATE_TEST_DATABASE_URL or QUOTAGATE_DATABASE_URL naming a server
where we may create databases), falling back to the usual local ports. Each test gets its own
Redis key prefix (deleted afterwards); each test session gets its own database (dropped at the end).

The engine, ledger and jobs suites run twice: against that Redis and against a real 3-master
Redis Cluster (one replica each) started once per test run on free loopback ports
(tests/support/cluster.py). ``redis_url`` is then the cluster's ``redis+cluster://`` URL and
``queue_url`` the standalone Redis, as a deployment on a cluster has it. Set
QUOTAGATE_TEST_CLUSTER=0 to run them against the standalone Redis only.

A test marked ``backend_neutral`` runs on the standalone Redis only: it checks nothing a cluster
changes (an argument refused before any Redis call, while the scripts' own refusals run on
both), or it works on a redis-server of its own. QUOTAGATE_TEST_CLUSTER=all runs it on both.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from tests.support.cluster import RedisCluster, redis_cli_binary, redis_cluster
from tests.support.jwt_issuer import Issuer, JwksServer
from tests.support.secret_watch import WATCH
from tests.support.servers import RedisProcess, env_url, redis_process

from quotagate.config import Config, load_config, parse_config
from quotagate.engine import CreditEngine
from quotagate.engine.connection import redis_from_url, sync_redis_from_url
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


ON_BOTH_BACKENDS = ("engine", "ledger", "jobs")
"""The suites (folders under tests/) whose tests that use Redis run on standalone and cluster."""

BACKENDS = ("standalone", "cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "redis_backend" not in metafunc.fixturenames or not _cluster_wanted():
        return
    suite = Path(str(metafunc.definition.path)).relative_to(Path(__file__).parent).parts[0]
    if suite not in ON_BOTH_BACKENDS:
        return
    if metafunc.definition.get_closest_marker("backend_neutral") and not _every_test_on_both():
        return
    metafunc.parametrize("redis_backend", BACKENDS, indirect=True, scope="session")


def _cluster_wanted() -> bool:
    return os.environ.get("QUOTAGATE_TEST_CLUSTER", "1") != "0" and redis_cli_binary() is not None


def _every_test_on_both() -> bool:
    """QUOTAGATE_TEST_CLUSTER=all: the backend-neutral tests run on the cluster too."""
    return os.environ.get("QUOTAGATE_TEST_CLUSTER") == "all"


@pytest.fixture(scope="session")
def redis_backend(request: pytest.FixtureRequest) -> str:
    """ "standalone" or "cluster": which Redis this test runs on (see the module docstring)."""
    return str(getattr(request, "param", "standalone"))


@pytest.fixture(scope="session")
def test_cluster() -> Iterator[RedisCluster]:
    """The test run's Redis Cluster: 3 masters, one replica each, started on first use."""
    with redis_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_url(redis_backend: str, request: pytest.FixtureRequest) -> str:
    if redis_backend == "cluster":
        cluster: RedisCluster = request.getfixturevalue("test_cluster")
        return cluster.url
    return REDIS_URL


@pytest.fixture(scope="session")
def queue_url() -> str:
    """The standalone Redis for RQ's queues (RQ does not run on a cluster)."""
    return REDIS_URL


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards (on every master of
    a cluster: a key of it may be on any)."""
    prefix = f"test{uuid.uuid4().hex[:12]}"
    yield prefix
    client = sync_redis_from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    keys += client.scan_iter(match=f"rq:*:{prefix}:*", count=1000)  # its queues and cron jobs
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    client.close()


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's Redis, str replies (a cluster's client on the cluster)."""
    client = redis_from_url(redis_url)
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


@pytest.fixture
def issuer() -> Issuer:
    """A token issuer of this test's own (its keys, its JWKS)."""
    return Issuer()


@pytest.fixture
def jwks(issuer: Issuer) -> Iterator[JwksServer]:
    """``issuer``'s JWKS served on loopback; it counts its fetches."""
    with JwksServer(issuer).running() as server:
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
