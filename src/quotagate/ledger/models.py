"""The ledger's tables, as SQLAlchemy 2 models: the schema's one description.

The migrations in ``quotagate/ledger/migrations`` create exactly these (a test compares the
migrated database with this metadata), and the flush, the history and the books use the table
and column names below in their SQL.

    user_credits          one row per account: tier, status, and the balance as of the last
                          transaction that reached the ledger (the snapshot)
    credit_transactions   every transaction Redis accepted, exactly once (id = UUIDv7 text)
    credit_grants         one row per explicit grant (docs/grants.md): what it granted, what
                          is left of it, and how it ended
    outbox_flushes        per outbox partition: the last stream id a flush committed and when
    ledger_quarantine     outbox entries PostgreSQL refused as they were, kept raw
    usage_hourly          credit_transactions summed per account, hour, resource and type
                          (kept by a trigger in the transaction of every insert)
    alerts                every alert raised, once each; alert_arms: rules that fired and
                          wait to be re-armed
    webhook_endpoints     where alerts are sent; webhook_deliveries: each sending, its tries
    api_keys              the gateway's API keys (hashes only)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, JSONB, TIMESTAMP
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from quotagate.engine.results import GRANT_SOURCES

TRANSACTION_TYPES = ("earn", "spend", "refund", "grant", "expire", "adjust")
"""Every ``type`` a transaction may have (the outbox's ``t`` field, account events aside)."""

GRANT_END_REASONS = ("expired", "voided", "spent")
"""Why an explicit grant ended: its expiry passed, an admin voided it, or draws used it up."""

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}
"""Constraint names follow one pattern, so a later migration can name what it alters."""

TZ = TIMESTAMP(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UserCredits(Base):
    """The snapshot of one account: what the flushed transactions sum to, and its settings."""

    __tablename__ = "user_credits"

    account_id: Mapped[str] = mapped_column(Text, primary_key=True)
    tier: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    credits: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    """The balance (both buckets) as of the last transaction in the ledger."""
    monthly_credits: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    """The monthly bucket's part of ``credits`` (renewal may expire it)."""
    overdraft_limit: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    last_reset_at: Mapped[datetime | None] = mapped_column(TZ)
    last_transaction_id: Mapped[str | None] = mapped_column(Text)
    """The newest transaction applied (UUIDv7 ids sort by time)."""
    renewed_period: Mapped[str | None] = mapped_column(Text)
    """The last period ("YYYY-MM") whose renewal ran for the account, also when it granted
    nothing: recovery restores it, so a period is never renewed twice."""
    last_event_position: Mapped[str | None] = mapped_column(Text)
    """Outbox position (zero-padded stream id) of the account event that set tier, status and
    overdraft; an event from an older position never overwrites them. NULL until the first
    event arrives (a row created by a transaction carries placeholder settings)."""
    member_limit: Mapped[int | None] = mapped_column(BigInteger)
    """For a pool's member (docs/pools.md): the most credits the pool pays for its charges in
    one period of the pool; NULL: no limit of its own (and for every account that is no
    member)."""
    own_credits_first: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    """For a member: its own credits go before the pool's."""
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())

    __table_args__ = (
        CheckConstraint("status IN ('active', 'banned')", name="status"),
        CheckConstraint("overdraft_limit >= 0", name="overdraft_limit"),
        CheckConstraint("member_limit IS NULL OR member_limit >= 0", name="member_limit"),
    )


class CreditTransaction(Base):
    """One balance change, as the Lua script that made it wrote it to the outbox."""

    __tablename__ = "credit_transactions"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    account_id: Mapped[str] = mapped_column(Text)
    amount: Mapped[int] = mapped_column(BigInteger)
    """Signed: spends and expiries are negative."""
    type: Mapped[str] = mapped_column(Text)
    resource: Mapped[str | None] = mapped_column(Text)
    units: Mapped[int | None] = mapped_column(BigInteger)
    description: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(TZ)
    """Redis server time when the script ran (millisecond precision)."""
    refund_of: Mapped[str | None] = mapped_column(Text)
    """For a refund: the spend it returns (all refunds of one spend return at most its cost)."""
    grant_id: Mapped[str | None] = mapped_column(Text)
    """The explicit grant this row created (a grant), expired (an expire) or voided (an
    adjust); NULL for every other row."""
    grant_draws: Mapped[dict[str, int] | None] = mapped_column(JSONB)
    """For a spend: credits it drew from each explicit grant, by grant id (NULL: it drew on
    the standing grants only)."""
    member_id: Mapped[str | None] = mapped_column(Text)
    """On a pool's spend: the member whose charge the pool paid (docs/pools.md); NULL on
    every other row."""

    __table_args__ = (
        CheckConstraint(
            "type IN (" + ", ".join(f"'{t}'" for t in TRANSACTION_TYPES) + ")", name="type"
        ),
        # Reconciliation sums each grant's expiry and void.
        Index(
            "ix_credit_transactions_grant_id",
            "grant_id",
            postgresql_where=text("grant_id IS NOT NULL"),
        ),
        # History reads one account newest first; the reconciliation sums one account's
        # amounts. Carrying amount in the index lets that sum be an index-only scan.
        Index(
            "ix_credit_transactions_account_history",
            "account_id",
            text("created_at DESC"),
            text("id DESC"),
            postgresql_include=["amount"],
        ),
        # A member's history and usage (its pool's rows that name it), a pool's usage by
        # member, and a member's usage in the pool's period (recovery, reconciliation).
        Index(
            "ix_credit_transactions_member_history",
            "account_id",
            "member_id",
            text("created_at DESC"),
            text("id DESC"),
            postgresql_include=["amount"],
            postgresql_where=text("member_id IS NOT NULL"),
        ),
        # Reports and reconciliation windows by time. Rows arrive nearly in time order, so a
        # BRIN index is a few pages and costs the flush next to nothing.
        Index(
            "ix_credit_transactions_created_at_brin",
            "created_at",
            postgresql_using="brin",
        ),
        # The sum of a spend's refunds, read before each refund of it.
        Index(
            "ix_credit_transactions_refund_of",
            "refund_of",
            postgresql_where=text("refund_of IS NOT NULL"),
        ),
    )


class CreditGrant(Base):
    """An explicit grant (docs/grants.md): written by the flush from its ``grant`` transaction,
    its ``remaining`` lowered by the draws, expiry and void of later transactions. Recovery
    gives Redis back the grants that are still live (remaining credits, not ended)."""

    __tablename__ = "credit_grants"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    account_id: Mapped[str] = mapped_column(Text)
    amount: Mapped[int] = mapped_column(BigInteger)
    """What it granted."""
    remaining: Mapped[int] = mapped_column(BigInteger)
    """What is left of it, as of the last transaction in the ledger."""
    source: Mapped[str] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(SmallInteger)
    """0..100, lower is spent first."""
    expires_at: Mapped[datetime | None] = mapped_column(TZ)
    """NULL: never expires."""
    created_at: Mapped[datetime] = mapped_column(TZ)
    ended_at: Mapped[datetime | None] = mapped_column(TZ)
    end_reason: Mapped[str | None] = mapped_column(Text)
    transaction_id: Mapped[str] = mapped_column(Text)
    """The ``grant`` transaction that created it."""

    __table_args__ = (
        CheckConstraint(
            "source IN (" + ", ".join(f"'{s}'" for s in GRANT_SOURCES) + ")", name="source"
        ),
        CheckConstraint("priority BETWEEN 0 AND 100", name="priority"),
        CheckConstraint(
            "end_reason IS NULL OR end_reason IN ("
            + ", ".join(f"'{r}'" for r in GRANT_END_REASONS)
            + ")",
            name="end_reason",
        ),
        # Recovery reads the live grants of each account it restores.
        Index(
            "ix_credit_grants_account_id_live",
            "account_id",
            postgresql_where=text("remaining > 0 AND ended_at IS NULL"),
        ),
    )


class OutboxFlush(Base):
    """Per outbox partition: what the last committed flush reached (for ``quotagate status``)."""

    __tablename__ = "outbox_flushes"

    partition: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_stream_id: Mapped[str] = mapped_column(Text)
    flushed_at: Mapped[datetime] = mapped_column(TZ)
    transactions: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    """Rows the flushes of this partition inserted, in total."""


class LedgerQuarantine(Base):
    """An outbox entry PostgreSQL refused to store as it was (text it cannot hold, such as NUL).

    The entry's money is booked without the offending text; the raw entry is kept here, as
    bytes, with the error, for an operator to look at. One bad entry never stops a partition.
    """

    __tablename__ = "ledger_quarantine"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer)
    stream_id: Mapped[str] = mapped_column(Text)
    transaction_id: Mapped[str | None] = mapped_column(Text)
    account_id: Mapped[str | None] = mapped_column(Text)
    raw_entry: Mapped[bytes] = mapped_column(BYTEA)
    error: Mapped[str] = mapped_column(Text)
    quarantined_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())

    __table_args__ = (UniqueConstraint("partition", "stream_id"),)


class ApiKey(Base):
    """An API key of the gateway; only its hash is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[str] = mapped_column(Text, unique=True)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(TZ)


class UsageHourly(Base):
    """The ledger's transactions summed per account, UTC hour, resource and type.

    Usage queries read this rather than the ledger: a month of one account is at most
    720 hours times its resources and types, whatever its number of transactions. A
    statement-level trigger on ``credit_transactions`` (migration 0003) adds
    the rows each INSERT or COPY actually inserted, in the same transaction: the flush's
    fast and checked paths and the write-through alike, and a row skipped by ON CONFLICT
    or rolled back is never counted.
    """

    __tablename__ = "usage_hourly"

    account_id: Mapped[str] = mapped_column(Text, primary_key=True)
    hour: Mapped[datetime] = mapped_column(TZ, primary_key=True)
    """The start of the UTC hour the transactions were made in."""
    resource: Mapped[str] = mapped_column(Text, primary_key=True)
    """The resource charged; '' for transactions without one (grants, refunds...)."""
    type: Mapped[str] = mapped_column(Text, primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    """Signed sum of the transactions' amounts (spends and expiries are negative)."""
    units: Mapped[int] = mapped_column(BigInteger)
    transactions: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        # The all-accounts form reads a time range across every account.
        Index("ix_usage_hourly_hour", "hour"),
    )


class UsageHourlyTotal(Base):
    """``usage_hourly`` over all accounts: per UTC hour, resource and type, in ``shard``s (an
    account's shard is a hash of its id), kept by the same trigger. Flushes of different
    partitions each update their own totals rows in their own transaction; with shards they
    seldom wait on one another for the same hour's row."""

    __tablename__ = "usage_hourly_totals"

    hour: Mapped[datetime] = mapped_column(TZ, primary_key=True)
    resource: Mapped[str] = mapped_column(Text, primary_key=True)
    type: Mapped[str] = mapped_column(Text, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    amount: Mapped[int] = mapped_column(BigInteger)
    units: Mapped[int] = mapped_column(BigInteger)
    transactions: Mapped[int] = mapped_column(BigInteger)


class Alert(Base):
    """An alert, raised once (``dedupe_key`` says what "once" means for its kind)."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    """balance_below, credits_expiring or unusual_consumption."""
    account_id: Mapped[str] = mapped_column(Text)
    rule: Mapped[str] = mapped_column(Text)
    """The configured rule that raised it, by its name."""
    dedupe_key: Mapped[str] = mapped_column(Text, unique=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())

    __table_args__ = (Index("ix_alerts_account_id_id", "account_id", "id"),)


class AlertArm(Base):
    """A rule that fired for an account: it fires again only after this row goes (re-armed:
    the balance rose above the threshold, or consumption went back to usual)."""

    __tablename__ = "alert_arms"

    account_id: Mapped[str] = mapped_column(Text, primary_key=True)
    rule: Mapped[str] = mapped_column(Text, primary_key=True)
    fired_at: Mapped[datetime] = mapped_column(TZ)
    seen_at: Mapped[datetime] = mapped_column(TZ)
    """When the condition was last seen to hold."""


class WebhookEndpoint(Base):
    """Where alerts of the listed events are sent, signed with ``secret``."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    secret: Mapped[str] = mapped_column(Text)
    """``whsec_`` and the base64 key, as Standard Webhooks writes it; never logged."""
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    disabled_at: Mapped[datetime | None] = mapped_column(TZ)


class WebhookDelivery(Base):
    """One alert to one endpoint: pending until delivered, or dead after the last try."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    """The ``webhook-id`` header: the same on every try, so receivers can drop repeats."""
    endpoint_id: Mapped[str] = mapped_column(
        Text, ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    alert_id: Mapped[int] = mapped_column(BigInteger)
    event: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    """The exact JSON body that is signed and sent."""
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(TZ)

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="status"),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )


metadata = Base.metadata


class ShadowCharge(Base):
    """A charge of a route or tier in shadow mode: what it would have done, nothing charged.

    Written by the flush from the partitions' shadow streams; ``quotagate shadow report`` sums
    it per account and resource. ``available`` is the shadow balance the decision saw.
    """

    __tablename__ = "shadow_charges"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    account_id: Mapped[str] = mapped_column(Text)
    resource: Mapped[str] = mapped_column(Text)
    units: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[int] = mapped_column(BigInteger)
    decision: Mapped[str] = mapped_column(Text)
    available: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ)

    __table_args__ = (
        Index("ix_shadow_charges_created_at", "created_at"),
        Index("ix_shadow_charges_account_id_created_at", "account_id", "created_at"),
    )
