"""The ledger: user_credits, credit_transactions, outbox_flushes, api_keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = postgresql.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "user_credits",
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("tier", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("credits", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("monthly_credits", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("overdraft_limit", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_reset_at", TZ, nullable=True),
        sa.Column("last_transaction_id", sa.Text(), nullable=True),
        sa.Column("last_event_position", sa.Text(), nullable=True),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("status IN ('active', 'banned')", name=op.f("ck_user_credits_status")),
        sa.CheckConstraint("overdraft_limit >= 0", name=op.f("ck_user_credits_overdraft_limit")),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_user_credits")),
    )
    op.create_table(
        "credit_transactions",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=True),
        sa.Column("units", sa.BigInteger(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.CheckConstraint(
            "type IN ('earn', 'spend', 'refund', 'grant', 'expire', 'adjust')",
            name=op.f("ck_credit_transactions_type"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_transactions")),
    )
    op.create_index(
        "ix_credit_transactions_account_history",
        "credit_transactions",
        ["account_id", sa.text("created_at DESC"), sa.text("id DESC")],
        postgresql_include=["amount"],
    )
    op.create_index(
        "ix_credit_transactions_created_at_brin",
        "credit_transactions",
        ["created_at"],
        postgresql_using="brin",
    )
    op.create_table(
        "outbox_flushes",
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_stream_id", sa.Text(), nullable=False),
        sa.Column("flushed_at", TZ, nullable=False),
        sa.Column("transactions", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("partition", name=op.f("pk_outbox_flushes")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_table("outbox_flushes")
    op.drop_index("ix_credit_transactions_created_at_brin", table_name="credit_transactions")
    op.drop_index("ix_credit_transactions_account_history", table_name="credit_transactions")
    op.drop_table("credit_transactions")
    op.drop_table("user_credits")
