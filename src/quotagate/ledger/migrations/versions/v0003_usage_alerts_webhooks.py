"""Usage per account, hour, resource and type, kept by the ledger itself; alerts; webhooks.

- ``usage_hourly``: the ledger's transactions summed per account, UTC hour, resource ('' for
  none) and type: amount (signed), units and count. Usage queries read it, not the ledger.
- ``usage_hourly_totals``: the same over all accounts, per hour, resource and type (in a few
  shards, by account), for the all-accounts form of the usage query.
- ``qg_usage_hourly_add``: an AFTER INSERT trigger, once per statement, that adds the rows the
  statement inserted (its transition table) to both tables, in the same transaction.
  Every way rows reach the ledger (the flush's COPY, its ON CONFLICT path, the write-through)
  is an INSERT or a COPY into ``credit_transactions``, so none can forget it; rows that ON
  CONFLICT skipped are not in the transition table, and a rolled back batch takes its sums
  with it.
- The existing ledger is summed into the table by the upgrade, in the transaction that
  creates the trigger: creating it locks the table against writes until the commit, so a
  flush running meanwhile waits, and no row is counted twice or missed.

- ``alerts``: every alert raised (balance below a threshold, monthly credits about to expire,
  unusual consumption), once each (``dedupe_key``); ``alert_arms``: the rules that fired for
  an account and wait to be re-armed.
- ``webhook_endpoints`` and ``webhook_deliveries``: where alerts are sent, and each sending
  with its attempts, next try and outcome.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = postgresql.TIMESTAMP(timezone=True)

_SUMS = """
    SELECT account_id, date_trunc('hour', created_at, 'UTC') AS hour,
           coalesce(resource, '') AS resource, type,
           sum(amount)::bigint, coalesce(sum(units), 0)::bigint, count(*)::bigint
    FROM {source}
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
"""
# ORDER BY: concurrent statements lock the rows they upsert in one order, so two flushes
# or a flush and a write-through never deadlock on them.

_UPSERT = """
    INSERT INTO usage_hourly AS u
        (account_id, hour, resource, type, amount, units, transactions)
    {sums}
    ON CONFLICT (account_id, hour, resource, type) DO UPDATE SET
        amount = u.amount + excluded.amount,
        units = u.units + excluded.units,
        transactions = u.transactions + excluded.transactions
"""

SHARDS = 16
"""Rows per hour, resource and type in ``usage_hourly_totals``: flushes of different
partitions (each its own transaction) then rarely wait on one another's totals row."""

_TOTAL_SUMS = f"""
    SELECT date_trunc('hour', created_at, 'UTC') AS hour, coalesce(resource, '') AS resource,
           type, (abs(hashtext(account_id)) % {SHARDS})::smallint AS shard,
           sum(amount)::bigint, coalesce(sum(units), 0)::bigint, count(*)::bigint
    FROM {{source}}
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
"""

_TOTAL_UPSERT = """
    INSERT INTO usage_hourly_totals AS u
        (hour, resource, type, shard, amount, units, transactions)
    {sums}
    ON CONFLICT (hour, resource, type, shard) DO UPDATE SET
        amount = u.amount + excluded.amount,
        units = u.units + excluded.units,
        transactions = u.transactions + excluded.transactions
"""

ADD_FUNCTION = f"""
CREATE FUNCTION qg_usage_hourly_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {_UPSERT.format(sums=_SUMS.format(source="inserted_rows"))};
    {_TOTAL_UPSERT.format(sums=_TOTAL_SUMS.format(source="inserted_rows"))};
    RETURN NULL;
END
$$
"""

ADD_TRIGGER = """
CREATE TRIGGER credit_transactions_usage_hourly
AFTER INSERT ON credit_transactions
REFERENCING NEW TABLE AS inserted_rows
FOR EACH STATEMENT EXECUTE FUNCTION qg_usage_hourly_add()
"""

BACKFILL = _UPSERT.format(sums=_SUMS.format(source="credit_transactions"))
BACKFILL_TOTALS = _TOTAL_UPSERT.format(sums=_TOTAL_SUMS.format(source="credit_transactions"))


def upgrade() -> None:
    op.create_table(
        "usage_hourly",
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("hour", TZ, nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("transactions", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "account_id", "hour", "resource", "type", name=op.f("pk_usage_hourly")
        ),
    )
    op.create_index("ix_usage_hourly_hour", "usage_hourly", ["hour"])
    op.create_table(
        "usage_hourly_totals",
        sa.Column("hour", TZ, nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("transactions", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "hour", "resource", "type", "shard", name=op.f("pk_usage_hourly_totals")
        ),
    )
    op.execute(ADD_FUNCTION)
    op.execute(ADD_TRIGGER)
    op.execute(BACKFILL)
    op.execute(BACKFILL_TOTALS)
    _alerts()
    _webhooks()


def _alerts() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("dedupe_key", sa.Text(), nullable=False),
        sa.Column("details", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_alerts_dedupe_key")),
    )
    op.create_index("ix_alerts_account_id_id", "alerts", ["account_id", "id"])
    op.create_table(
        "alert_arms",
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("fired_at", TZ, nullable=False),
        sa.Column("seen_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "rule", name=op.f("pk_alert_arms")),
    )


def _webhooks() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("disabled_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("endpoint_id", sa.Text(), nullable=False),
        sa.Column("alert_id", sa.BigInteger(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("delivered_at", TZ, nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'dead')", name=op.f("ck_webhook_deliveries_status")
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            ondelete="CASCADE",
            name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_table("alert_arms")
    op.drop_table("alerts")
    op.execute("DROP TRIGGER credit_transactions_usage_hourly ON credit_transactions")
    op.execute("DROP FUNCTION qg_usage_hourly_add()")
    op.drop_table("usage_hourly_totals")
    op.drop_table("usage_hourly")
