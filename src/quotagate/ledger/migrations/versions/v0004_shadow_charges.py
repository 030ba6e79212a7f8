"""Shadow charges: what routes and tiers in shadow mode would have charged and refused.

- ``shadow_charges``: one row per shadow decision, written by the flush from the partitions'
  shadow streams (their entry id is the row's id, so a flush run twice writes a row once).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = postgresql.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "shadow_charges",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("available", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_charges")),
    )
    op.create_index("ix_shadow_charges_created_at", "shadow_charges", ["created_at"])
    op.create_index(
        "ix_shadow_charges_account_id_created_at", "shadow_charges", ["account_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_table("shadow_charges")
