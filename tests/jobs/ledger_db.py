"""Ledger databases for the operations tests, which must each see only their own accounts.

Reconciliation and recovery read every account of ``user_credits``, so they cannot share the
session's database with tests of other prefixes. The operations tests get a migrated
database of their own (:func:`migrated_database`), emptied before each test
(:func:`empty`: TRUNCATE takes milliseconds; creating and dropping a database per test
costs a checkpoint each, seconds on a busy machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

import asyncpg
from tests.conftest import ADMIN_DATABASE_URL, _with_database

from quotagate.ledger import upgrade


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def new_database(*, migrated: bool = True) -> Iterator[str]:
    """A new database (at the head revision unless told); yields its URL, drops it after."""
    name = f"qg_ops_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        url = _with_database(ADMIN_DATABASE_URL, name)
        if migrated:
            upgrade(url)
        yield url
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


TABLES = (
    "credit_transactions",
    "usage_hourly",
    "alerts",
    "alert_arms",
    "webhook_deliveries",
    "webhook_endpoints",
    "user_credits",
    "outbox_flushes",
    "api_keys",
    "ledger_quarantine",
    "credit_grants",
)


def empty(url: str) -> str:
    """Remove every row of the ledger's tables; returns the URL."""

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"TRUNCATE {', '.join(TABLES)}")
        finally:
            await conn.close()

    asyncio.run(run())
    return url
