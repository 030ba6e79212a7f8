"""Credit grants: explicit grants and what each transaction took from them (docs/grants.md).

- ``credit_grants``: one row per explicit grant, written by the flush from its ``grant``
  transaction; its ``remaining`` follows the draws, expiry and void of later transactions.
  A partial index on the live grants of an account serves recovery.
- ``credit_transactions.grant_id``: the grant a row created, expired or voided.
- ``credit_transactions.grant_draws``: for a spend, credits drawn from each explicit grant.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = postgresql.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "credit_grants",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("expires_at", TZ, nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("ended_at", TZ, nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=True),
        sa.Column("transaction_id", sa.Text(), nullable=False),
        sa.CheckConstraint(
            "source IN ('renewal', 'purchase', 'promotion', 'refund', 'adjustment')",
            name=op.f("ck_credit_grants_source"),
        ),
        sa.CheckConstraint("priority BETWEEN 0 AND 100", name=op.f("ck_credit_grants_priority")),
        sa.CheckConstraint(
            "end_reason IS NULL OR end_reason IN ('expired', 'voided', 'spent')",
            name=op.f("ck_credit_grants_end_reason"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_grants")),
    )
    op.create_index(
        "ix_credit_grants_account_id_live",
        "credit_grants",
        ["account_id"],
        postgresql_where=sa.text("remaining > 0 AND ended_at IS NULL"),
    )
    op.add_column("credit_transactions", sa.Column("grant_id", sa.Text(), nullable=True))
    op.add_column(
        "credit_transactions",
        sa.Column("grant_draws", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.create_index(
        "ix_credit_transactions_grant_id",
        "credit_transactions",
        ["grant_id"],
        postgresql_where=sa.text("grant_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_credit_transactions_grant_id", table_name="credit_transactions")
    op.drop_column("credit_transactions", "grant_draws")
    op.drop_column("credit_transactions", "grant_id")
    op.drop_table("credit_grants")
