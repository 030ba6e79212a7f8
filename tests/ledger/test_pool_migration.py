"""Migration 0006 (pools): the member column and index of credit_transactions and the member
settings of user_credits, and a downgrade to 0005 that takes exactly those away."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from quotagate.ledger import Ledger, upgrade
from quotagate.ledger.migrate import downgrade

MEMBER_COLUMNS = """
SELECT table_name, column_name, data_type, is_nullable, column_default
FROM information_schema.columns
WHERE (table_name, column_name) IN (('credit_transactions', 'member_id'),
                                    ('user_credits', 'member_limit'),
                                    ('user_credits', 'own_credits_first'))
ORDER BY 1, 2
"""


async def test_the_member_index_serves_a_members_rows_newest_first(ledger: Ledger) -> None:
    async with ledger.pool.acquire() as conn:
        index = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE indexname = $1",
            "ix_credit_transactions_member_history",
        )
    assert "(account_id, member_id, created_at DESC, id DESC) INCLUDE (amount)" in index
    assert "WHERE (member_id IS NOT NULL)" in index


async def test_the_pools_migration_goes_down_to_0005_and_up_again(
    empty_database_url: str,
) -> None:
    conn = None
    try:
        await asyncio.to_thread(upgrade, empty_database_url)
        conn = await asyncpg.connect(empty_database_url)
        assert [tuple(r) for r in await conn.fetch(MEMBER_COLUMNS)] == [
            ("credit_transactions", "member_id", "text", "YES", None),
            ("user_credits", "member_limit", "bigint", "YES", None),
            ("user_credits", "own_credits_first", "boolean", "NO", "false"),
        ]
        await conn.execute(
            "INSERT INTO credit_transactions (id, account_id, amount, type, balance_after,"
            " created_at, member_id) VALUES ('t1', 'acme', -5, 'spend', -5, now(), 'acme~al')"
        )
        await conn.execute(
            "INSERT INTO user_credits (account_id, tier, status, member_limit)"
            " VALUES ('acme~al', 'free', 'active', 10)"
        )
        assert await conn.fetchval("SELECT own_credits_first FROM user_credits") is False
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE user_credits SET member_limit = -1")

        await asyncio.to_thread(downgrade, empty_database_url, "0005")
        assert await conn.fetch(MEMBER_COLUMNS) == []
        assert await conn.fetchval(
            "SELECT to_regclass('ix_credit_transactions_member_history')"
        ) is None  # fmt: skip
        assert await conn.fetchval("SELECT count(*) FROM credit_transactions") == 1
        assert await conn.fetchval("SELECT count(*) FROM user_credits") == 1

        await asyncio.to_thread(upgrade, empty_database_url)
        assert len(await conn.fetch(MEMBER_COLUMNS)) == 3
        assert await conn.fetchval("SELECT member_id FROM credit_transactions") is None
        assert await conn.fetchval("SELECT member_limit FROM user_credits") is None
    finally:
        if conn is not None:
            await conn.close()
