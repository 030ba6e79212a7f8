"""Fixtures of the ledger tests: a migrated database (once per session) and a Ledger."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from tests.conftest import EngineFactory
from tests.ledger.support import config_text

from quotagate.engine import CreditEngine


@pytest.fixture
async def lengine(make_engine: EngineFactory) -> CreditEngine:
    """An engine on the ledger tests' config (8 partitions, opening grants, no rate limits)."""
    return await make_engine(config_text(8))


@pytest.fixture
def acct(key_prefix: str) -> Callable[[str], str]:
    """Account ids of this test's own: the session's database is shared by all tests."""
    return lambda name: f"{key_prefix}-{name}"


def _other_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture
def empty_database_url(database_url: str) -> Iterator[str]:
    """A database of its own, empty, dropped afterwards."""
    name = f"qg_test_empty_{uuid.uuid4().hex[:8]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield _other_database(database_url, name)
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def config_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The ledger tests' config as a file, for commands run in subprocesses."""
    path = tmp_path_factory.mktemp("config") / "config.toml"
    path.write_text(config_text(8))
    return str(path)
