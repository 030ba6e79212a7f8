"""Fixtures of the reverse-proxy tests: a migrated ledger, a hook key, the counting upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from tests.e2e.harness import Upstream

from quotagate.auth.store import KeyStore


@pytest.fixture(scope="session")
def hook_key(ledger_url: str) -> str:
    """A key with the hook scope, as `quotagate keys create --scope hook` makes it."""

    async def create() -> str:
        store = KeyStore(ledger_url)
        try:
            return (await store.create("e2e proxy", ["hook"]))[1]
        finally:
            await store.aclose()

    return asyncio.run(create())


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream().running() as server:
        yield server
