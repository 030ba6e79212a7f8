"""Fixtures of the ledger tests: a migrated database (once per session) and a Ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from tests.conftest import EngineFactory
from tests.ledger.support import config_text

from quotagate.engine import CreditEngine
from quotagate.ledger import Ledger, upgrade


@pytest.fixture(scope="session")
def ledger_url(database_url: str) -> str:
    """The session's database, migrated to the head revision."""
    upgrade(database_url)
    return database_url


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[Ledger]:
    ledger = await Ledger.connect(ledger_url)
    yield ledger
    await ledger.aclose()


@pytest.fixture
async def lengine(make_engine: EngineFactory) -> CreditEngine:
    """An engine on the ledger tests' config (8 partitions, opening grants, no rate limits)."""
    return await make_engine(config_text(8))


@pytest.fixture
def acct(key_prefix: str) -> Callable[[str], str]:
    """Account ids of this test's own: the session's database is shared by all tests."""
    return lambda name: f"{key_prefix}-{name}"
