"""How Alembic reaches the database: SQLAlchemy's async engine over asyncpg.

``quotagate.ledger.migrate`` builds the Alembic config (no alembic.ini: the URL comes from the
settings) and may hand over an open connection in ``config.attributes["connection"]``.
Concurrent ``quotagate migrate`` runs queue on an advisory lock instead of racing.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from quotagate.ledger.models import metadata

MIGRATION_LOCK = 7_301_985_121
"""Advisory lock key held while migrating (an arbitrary constant of ours)."""


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


async def _run_online(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def _main() -> None:
    config = context.config
    url = config.get_main_option("sqlalchemy.url")
    assert url, "the migration config carries the database URL"
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
    else:
        asyncio.run(_run_online(url))


_main()
