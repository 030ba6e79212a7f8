"""Refunds name their spend, renewals leave a durable mark, refused entries are quarantined.

- ``credit_transactions.refund_of``: the spend a refund returns (all refunds of one spend
  together return at most what it charged); indexed for that sum.
- ``user_credits.renewed_period``: the last period whose renewal ran for the account, even one
  that granted nothing, so that recovery never renews a period twice.
- ``ledger_quarantine``: outbox entries PostgreSQL refused to store as they were. The entry's
  money is booked without the offending text; the raw entry is kept here (as bytes: the text
  PostgreSQL refused cannot be stored as text) for an operator to look at.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = postgresql.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.add_column("credit_transactions", sa.Column("refund_of", sa.Text(), nullable=True))
    op.create_index(
        "ix_credit_transactions_refund_of",
        "credit_transactions",
        ["refund_of"],
        postgresql_where=sa.text("refund_of IS NOT NULL"),
    )
    op.add_column("user_credits", sa.Column("renewed_period", sa.Text(), nullable=True))
    op.create_table(
        "ledger_quarantine",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("stream_id", sa.Text(), nullable=False),
        sa.Column("transaction_id", sa.Text(), nullable=True),
        sa.Column("account_id", sa.Text(), nullable=True),
        sa.Column("raw_entry", postgresql.BYTEA(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("quarantined_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_quarantine")),
        sa.UniqueConstraint("partition", "stream_id", name=op.f("uq_ledger_quarantine_partition")),
    )


def downgrade() -> None:
    op.drop_table("ledger_quarantine")
    op.drop_column("user_credits", "renewed_period")
    op.drop_index("ix_credit_transactions_refund_of", table_name="credit_transactions")
    op.drop_column("credit_transactions", "refund_of")
