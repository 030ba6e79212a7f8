"""Fixtures of the operations tests: a ledger database emptied for each test, and a Ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from tests.jobs.ledger_db import empty, new_database

from quotagate.ledger import Ledger


@pytest.fixture(scope="session")
def ops_database_url() -> Iterator[str]:
    with new_database() as url:
        yield url


@pytest.fixture
def own_ledger_url(ops_database_url: str) -> str:
    """A migrated ledger database that only this test uses (emptied first)."""
    return empty(ops_database_url)


@pytest.fixture
async def own_ledger(own_ledger_url: str) -> AsyncIterator[Ledger]:
    ledger = await Ledger.connect(own_ledger_url, max_connections=4)
    yield ledger
    await ledger.aclose()
