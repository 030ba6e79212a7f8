"""Fixtures of the operations tests: a ledger database per test, and a Ledger on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from tests.jobs.ledger_db import cloned_database, template_database

from quotagate.ledger import Ledger


@pytest.fixture(scope="session")
def ops_template() -> Iterator[str]:
    with template_database() as name:
        yield name


@pytest.fixture
def own_ledger_url(ops_template: str) -> Iterator[str]:
    """A migrated ledger database that only this test uses."""
    with cloned_database(ops_template) as url:
        yield url


@pytest.fixture
async def own_ledger(own_ledger_url: str) -> AsyncIterator[Ledger]:
    ledger = await Ledger.connect(own_ledger_url, max_connections=4)
    yield ledger
    await ledger.aclose()
