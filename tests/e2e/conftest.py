"""Fixtures of the reverse-proxy tests: a migrated ledger, a hook key, the counting upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from tests.conftest import EngineFactory
from tests.e2e.harness import Services, Upstream

from quotagate.auth.store import KeyStore


def _key(ledger_url: str, name: str, scope: str) -> str:
    async def create() -> str:
        store = KeyStore(ledger_url)
        try:
            return (await store.create(name, [scope]))[1]
        finally:
            await store.aclose()

    return asyncio.run(create())


@pytest.fixture(scope="session")
def hook_key(ledger_url: str) -> str:
    """A key with the hook scope, as `quotagate keys create --scope hook` makes it."""
    return _key(ledger_url, "e2e proxy", "hook")


@pytest.fixture(scope="session")
def service_key(ledger_url: str) -> str:
    """The upstream app's key: it settles the reservations the hook made."""
    return _key(ledger_url, "e2e app", "service")


@pytest.fixture(scope="session")
def settle_key(ledger_url: str) -> str:
    """nginx's own key for settling from the app's answer: the settle scope, nothing more."""
    return _key(ledger_url, "e2e nginx settle", "settle")


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream().running() as server:
        yield server


@pytest.fixture
def services(
    make_engine: EngineFactory, redis_url: str, ledger_url: str, key_prefix: str,
    hook_key: str, service_key: str, settle_key: str,
) -> Services:  # fmt: skip
    return Services(
        make_engine, redis_url, ledger_url, key_prefix, hook_key, service_key, settle_key
    )
