"""The schema: migrations match the models, and a database that is behind is refused."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from quotagate.errors import ConfigError
from quotagate.ledger import Ledger, head_revision, upgrade
from quotagate.ledger.migrate import downgrade
from quotagate.ledger.models import metadata
from quotagate.ledger.urls import sqlalchemy_url


async def test_the_migrated_schema_is_what_the_models_describe(ledger_url: str) -> None:
    engine = create_async_engine(sqlalchemy_url(ledger_url))
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), metadata
                )
            )
    finally:
        await engine.dispose()
    assert diff == []


async def test_api_keys_is_exactly_the_gateways_table(ledger: Ledger) -> None:
    async with ledger.pool.acquire() as conn:
        columns = await conn.fetch(
            "SELECT column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_name = 'api_keys' "
            "ORDER BY ordinal_position"
        )
        unique = await conn.fetchval(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'api_keys' "
            "AND indexdef LIKE 'CREATE UNIQUE INDEX % (key_hash)'"
        )
    assert [(c[0], c[1], c[2]) for c in columns] == [
        ("id", "text", "NO"),
        ("name", "text", "NO"),
        ("key_hash", "text", "NO"),
        ("scopes", "ARRAY", "NO"),
        ("created_at", "timestamp with time zone", "NO"),
        ("revoked_at", "timestamp with time zone", "YES"),
    ]
    assert columns[4]["column_default"] == "now()"
    assert unique == 1


async def test_history_and_reconciliation_have_their_indexes(ledger: Ledger) -> None:
    async with ledger.pool.acquire() as conn:
        defs = {
            r["indexname"]: r["indexdef"]
            for r in await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'credit_transactions'"
            )
        }
    history = defs["ix_credit_transactions_account_history"]
    assert "(account_id, created_at DESC, id DESC) INCLUDE (amount)" in history
    assert "USING brin (created_at)" in defs["ix_credit_transactions_created_at_brin"]
    assert "(id)" in defs["pk_credit_transactions"]


async def test_a_database_without_the_schema_is_refused_until_migrated(
    empty_database_url: str,
) -> None:
    ledger = await Ledger.connect(empty_database_url)
    try:
        with pytest.raises(ConfigError, match=r"run `quotagate migrate`"):
            await ledger.ensure_current()
        await asyncio.to_thread(upgrade, empty_database_url)
        await asyncio.to_thread(upgrade, empty_database_url)  # a second run changes nothing
        await ledger.ensure_current()
        assert await ledger.schema_revision() == head_revision()

        await asyncio.to_thread(downgrade, empty_database_url, "base")
        with pytest.raises(ConfigError, match=r"run `quotagate migrate`"):
            await ledger.ensure_current()

        async with ledger.pool.acquire() as conn:
            # alembic_version outlives a downgrade to base, empty
            await conn.execute("INSERT INTO alembic_version VALUES ('9999')")
        with pytest.raises(ConfigError, match="upgrade quotagate"):
            await ledger.ensure_current()
    finally:
        await ledger.aclose()


async def test_the_grants_migration_goes_down_to_0004_and_up_again(
    empty_database_url: str,
) -> None:
    """0005 adds credit_grants and the grant columns; its downgrade takes exactly those away,
    and the ledger keeps its rows."""
    grant_columns = (
        "SELECT column_name FROM information_schema.columns WHERE table_name = "
        "'credit_transactions' AND column_name IN ('grant_id', 'grant_draws') ORDER BY 1"
    )
    conn = None
    try:
        await asyncio.to_thread(upgrade, empty_database_url)
        conn = await asyncpg.connect(empty_database_url)
        await conn.execute(
            "INSERT INTO credit_transactions (id, account_id, amount, type, balance_after,"
            " created_at, grant_id) VALUES ('t1', 'a', 5, 'grant', 5, now(), 'g1')"
        )
        await conn.execute(
            "INSERT INTO credit_grants (id, account_id, amount, remaining, source, priority,"
            " created_at, transaction_id) VALUES ('g1', 'a', 5, 5, 'promotion', 50, now(), 't1')"
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO credit_grants (id, account_id, amount, remaining, source, priority,"
                " created_at, transaction_id) VALUES ('g2', 'a', 5, 5, 'gift', 50, now(), 't1')"
            )
        assert [r[0] for r in await conn.fetch(grant_columns)] == ["grant_draws", "grant_id"]

        await asyncio.to_thread(downgrade, empty_database_url, "0004")
        assert await conn.fetchval("SELECT to_regclass('credit_grants')") is None
        assert await conn.fetch(grant_columns) == []
        assert await conn.fetchval("SELECT count(*) FROM credit_transactions") == 1

        await asyncio.to_thread(upgrade, empty_database_url)
        assert await conn.fetchval("SELECT count(*) FROM credit_grants") == 0
        assert [r[0] for r in await conn.fetch(grant_columns)] == ["grant_draws", "grant_id"]
    finally:
        if conn is not None:
            await conn.close()
