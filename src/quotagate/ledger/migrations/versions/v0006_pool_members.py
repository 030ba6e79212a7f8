"""Pools: which member a pool's row was charged for, and each member's settings (docs/pools.md).

- ``credit_transactions.member_id``: on a pool's spend, the member whose charge the pool
  paid (NULL on every other row). A partial index on (account, member, time) serves a
  member's history and usage (its pool's rows naming it), a pool's usage by member, and the
  member's usage in the pool's period that recovery and reconciliation sum.
- ``user_credits.member_limit``: the most credits the pool pays for the member in one period
  of the pool (NULL: no limit of its own; always NULL for an account that is no member).
- ``user_credits.own_credits_first``: the member's own credits go before the pool's.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("credit_transactions", sa.Column("member_id", sa.Text(), nullable=True))
    op.create_index(
        "ix_credit_transactions_member_history",
        "credit_transactions",
        ["account_id", "member_id", sa.text("created_at DESC"), sa.text("id DESC")],
        postgresql_include=["amount"],
        postgresql_where=sa.text("member_id IS NOT NULL"),
    )
    op.add_column("user_credits", sa.Column("member_limit", sa.BigInteger(), nullable=True))
    op.add_column(
        "user_credits",
        sa.Column(
            "own_credits_first", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
    )
    op.create_check_constraint(
        op.f("ck_user_credits_member_limit"),
        "user_credits",
        "member_limit IS NULL OR member_limit >= 0",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_user_credits_member_limit"), "user_credits", type_="check")
    op.drop_column("user_credits", "own_credits_first")
    op.drop_column("user_credits", "member_limit")
    op.drop_index("ix_credit_transactions_member_history", table_name="credit_transactions")
    op.drop_column("credit_transactions", "member_id")
