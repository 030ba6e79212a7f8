"""A ledger database of one test's own, cloned from a migrated template.

Reconciliation and recovery read every account of ``user_credits``, so they cannot share the
session's database with tests of other prefixes. The template is migrated once per session;
each test gets ``CREATE DATABASE ... TEMPLATE`` (a file copy: a fraction of a second), dropped
afterwards.
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
def template_database() -> Iterator[str]:
    """A migrated database to clone; yields its name."""
    name = f"qg_ops_tpl_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        upgrade(_with_database(ADMIN_DATABASE_URL, name))
        yield name
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def cloned_database(template: str) -> Iterator[str]:
    """A fresh migrated database; yields its URL."""
    name = f"qg_ops_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield _with_database(ADMIN_DATABASE_URL, name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
