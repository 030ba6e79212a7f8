"""`quotagate migrate` on a server without the ledger's database: it creates it when the role
may, and otherwise says which command to run (a setup problem, exit 2, not "did not answer")."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import asyncpg
import pytest
from tests.cli.runner import invoke
from tests.conftest import ADMIN_DATABASE_URL

from quotagate.ledger.migrate import head_revision


async def _admin(*statements: str) -> list[object]:
    conn = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        return [await conn.fetchval(sql) for sql in statements]
    finally:
        await conn.close()


@pytest.fixture
def missing_database() -> Iterator[str]:
    name = f"qg_missing_{uuid.uuid4().hex[:10]}"
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}"'))


def _url(role: str, database: str) -> str:
    server = urlsplit(ADMIN_DATABASE_URL)
    return f"postgresql://{role}@{server.hostname}:{server.port or 5432}/{database}"


def test_migrate_creates_a_missing_database(missing_database: str) -> None:
    server_user = urlsplit(ADMIN_DATABASE_URL).username or "postgres"
    env = {"QUOTAGATE_DATABASE_URL": _url(server_user, missing_database)}
    done = invoke(["migrate"], env)
    assert done.code == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"created the database {missing_database}",
        f"ledger database at revision {head_revision()} (current)",
    ]
    again = invoke(["migrate"], env)
    assert again.code == 0 and "created" not in again.stdout


def test_migrate_says_what_to_run_when_the_role_may_not_create_it(missing_database: str) -> None:
    role = f"qg_nocreate_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE ROLE "{role}" LOGIN NOCREATEDB'))
    try:
        done = invoke(["migrate"], {"QUOTAGATE_DATABASE_URL": _url(role, missing_database)})
    finally:
        asyncio.run(_admin(f'DROP ROLE "{role}"'))
    server = urlsplit(ADMIN_DATABASE_URL)
    host, port = server.hostname, server.port or 5432
    assert done.code == 2, done
    assert done.stderr.strip().splitlines() == [
        f"error: the database {missing_database!r} does not exist on {host}:{port} and the role "
        f"{role!r} may not create it: run `createdb -h {host} -p {port} -U <a role that may> "
        f"-O {role} {missing_database}` (or `CREATE DATABASE` as such a role), then "
        "`quotagate migrate` again"
    ]
    exists = asyncio.run(
        _admin(f"SELECT count(*) FROM pg_database WHERE datname = '{missing_database}'")
    )
    assert exists == [0]
