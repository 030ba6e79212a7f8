"""Request bodies and answers as msgspec structs: strict decoding and the OpenAPI schemas.

Decoding is strict (msgspec's default): amounts are JSON integers, never floats, strings or
booleans; unknown fields are refused. The bounds here mirror the engine's checks, which run
again behind them, and appear in ``/openapi.json``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import Meta, Struct

from quotagate.config import MAX_AMOUNT
from quotagate.engine.grants import STANDING_PRIORITY
from quotagate.engine.results import GRANT_SOURCES, ShadowDecision
from quotagate.engine.validate import MAX_DESCRIPTION_CHARS

Amount = Annotated[int, Meta(ge=1, le=MAX_AMOUNT, description="A JSON integer from 1 to 10^12.")]
Limit = Annotated[int, Meta(ge=0, le=MAX_AMOUNT, description="A JSON integer from 0 to 10^12.")]
Seconds = Annotated[int, Meta(ge=1, le=30 * 86400)]
Description = Annotated[str, Meta(max_length=MAX_DESCRIPTION_CHARS)]
ResourceName = Annotated[str, Meta(min_length=1, max_length=64)]
TransactionId = Annotated[
    str,
    Meta(
        pattern="^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description="A transaction id (a UUID, as the answer that made it gave it).",
    ),
]
Metadata = Annotated[dict[str, Any], Meta(description="A JSON object, at most 4 KiB once encoded.")]

GrantSource = Literal["renewal", "purchase", "promotion", "refund", "adjustment"]
assert get_args(GrantSource) == GRANT_SOURCES  # the engine's list, spelled for the schema
Priority = Annotated[
    int, Meta(ge=0, le=100, description="0 to 100: lower is spent first (the standing grants: 50).")
]
MAX_GRANT_LIFETIME_SECONDS = 10**10
"""The longest ``expires_in_seconds`` (about 300 years): beyond it, leave the expiry out."""

AMOUNT_FIELDS = frozenset({"amount", "units", "overdraft_limit", "member_limit"})
"""Fields whose refusal is an ``invalid_amount`` (the rest are ``invalid_request``)."""


class _Body(Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


# -- requests ---------------------------------------------------------------------------


class AccountUpsert(_Body):
    tier: str | None = None
    status: Literal["active", "banned"] | None = None
    overdraft_limit: Limit | None = None
    member_limit: Limit | msgspec.UnsetType | None = msgspec.UNSET
    """A pool's member only: the most credits its pool pays for it per period of the pool;
    null: no limit; left out: as it was (none for a new member)."""
    own_credits_first: bool | None = None
    """A pool's member only: its own credits go first, the pool pays the rest."""


class CreditRequest(_Body):
    """A refund names the spend it returns (refund_of); grants and earnings name none."""

    amount: Amount
    type: Literal["grant", "earn", "refund"]
    refund_of: TransactionId | None = None
    description: Description | None = None
    metadata: Metadata | None = None


class GrantRequest(_Body):
    """An explicit grant: what it gives, where it came from, when its rest expires (at most
    one of ``expires_at`` and ``expires_in_seconds``; neither: never)."""

    amount: Amount
    source: GrantSource = "promotion"
    priority: Priority = STANDING_PRIORITY
    expires_at: (
        Annotated[datetime, Meta(tz=True, description="RFC 3339 with a zone, in the future.")]
        | None
    ) = None
    expires_in_seconds: Annotated[int, Meta(ge=1, le=MAX_GRANT_LIFETIME_SECONDS)] | None = None
    description: Description | None = None
    metadata: Metadata | None = None


class VoidGrantRequest(_Body):
    description: Description | None = None
    """Shown in the history (default: "grant voided")."""


class CheckRequest(_Body):
    resource: ResourceName
    units: Amount = 1


class ConsumeRequest(_Body):
    resource: ResourceName
    units: Amount = 1
    description: Description | None = None
    metadata: Metadata | None = None


class BatchCharge(_Body):
    """One charge of a batch: a consume's body, with the account and the idempotency key the
    single consume carries in its path and its Idempotency-Key header (both checked as
    there, by the engine, so a bad one gets the answer it would get there)."""

    account_id: Annotated[str, Meta(description="The account (as in a consume's path).")]
    resource: ResourceName
    units: Amount = 1
    description: Description | None = None
    metadata: Metadata | None = None
    idempotency_key: (
        Annotated[
            str,
            Meta(
                description="The charge's Idempotency-Key: the same record as a consume of "
                "this account with this key."
            ),
        ]
        | None
    ) = None


class ChargesRequest(_Body):
    """A batch of charges. Each item is decoded on its own: an item that is not a valid
    BatchCharge gets a 422 answer of its own, and the rest of the batch goes on."""

    charges: Annotated[
        list[msgspec.Raw],
        Meta(min_length=1, description="The charges (BatchCharge objects), in order."),
    ]


class HoldRequest(_Body):
    """Either ``resource`` (with ``units``) or ``amount``."""

    resource: ResourceName | None = None
    units: Amount | None = None
    amount: Amount | None = None
    ttl_seconds: Seconds | None = None


class CaptureRequest(_Body):
    amount: Amount | None = None


class ReleaseRequest(_Body):
    pass


class SettleRequest(_Body):
    """The actual cost of a reserved request: ``amount`` credits, or ``units`` of the
    resource its hold was priced by (at that price). 0 releases the hold."""

    amount: Limit | None = None
    units: Limit | None = None


# -- answers ----------------------------------------------------------------------------


class _Out(Struct):
    pass


class TransactionOut(_Out):
    id: str
    account_id: str
    amount: int
    type: str
    resource: str | None
    units: int | None
    description: str | None
    metadata: dict[str, Any] | None
    created_at: datetime
    balance_after: int | None
    pending: bool
    member_id: str | None = None
    """On a pool's spend for a member's charge: the member (null otherwise)."""


class BucketsOut(_Out):
    """The balance's two buckets: spends take the monthly credits first."""

    monthly: int
    """Credits of the tier's monthly grant (``reset`` tiers expire what is left of them)."""
    purchased: int
    """Everything else: credit grants, earnings, refunds, and ``add`` tiers' renewals; the
    explicit grants are in neither bucket (see ``grants``)."""


class GrantOut(_Out):
    """A grant holding credits. ``monthly`` and ``purchased`` are the standing grants (no
    ``created_at``); the others are explicit grants, by their UUIDv7 id."""

    id: str
    source: str
    priority: int
    amount: int
    """What it granted (a standing grant: what it holds now)."""
    remaining: int
    expires_at: datetime | None
    """Null: never expires."""
    created_at: datetime | None


class GrantsOut(_Out):
    grants: list[GrantOut]
    """In the order a spend takes from them: priority, then soonest expiry, then age."""
    next_expiry: datetime | None
    """When the next of them expires (null: none does)."""


class GrantMadeOut(_Out):
    grant_id: str
    transaction_id: str
    """The ``grant`` transaction that records it."""
    balance: int
    available: int
    replayed: bool
    durable: bool
    """False when PostgreSQL did not take it now (the flush will copy it)."""
    expires_at: datetime | None = None
    """When what is left of it expires, as the gateway fixed it (null: never)."""


class VoidOut(_Out):
    transaction_id: str
    """The ``adjust`` transaction that took the rest back."""
    voided: int
    """The credits taken back (what was left of the grant)."""
    balance: int
    available: int
    replayed: bool
    durable: bool = True
    """False when PostgreSQL did not take it now (the flush will copy it)."""


class OpenHoldOut(_Out):
    """A hold not yet captured, released or past its deadline."""

    hold_id: str
    amount: int
    expires_at: datetime
    resource: str | None
    """The resource it was priced from; None for a hold of a plain amount."""
    units: int | None


class MembershipOut(_Out):
    """An account's place in its pool (its id is ``<pool_id>~<name>``)."""

    pool_id: str
    member_limit: int | None
    """The most credits the pool pays for it per period of the pool; null: no limit."""
    own_credits_first: bool
    used: int
    """What the pool paid for it in the pool's current period."""


class PoolPaymentOut(_Out):
    """What a member's pool paid of the charge."""

    pool_id: str
    paid: int
    pool_balance: int
    """The pool's balance after the charge."""
    limit_remaining: int | None
    """What the pool may still pay for the member this period; null: no limit."""


class AccountOut(_Out):
    account_id: str
    tier: str
    status: str
    balance: int
    reserved: int
    available: int
    overdraft_limit: int
    last_reset_at: datetime | None
    recent_transactions: list[TransactionOut]
    buckets: BucketsOut
    holds: list[OpenHoldOut]
    """Open holds, the soonest to expire first; their sum is ``reserved``."""
    grants: list[GrantOut] = []
    """The grants holding credits, in spend order (as ``GET .../grants``)."""
    next_expiry: datetime | None = None
    """When the next grant expires (null: none does)."""
    membership: MembershipOut | None = None
    """For a member of a pool only."""


class AccountWritten(_Out):
    account_id: str
    created: bool
    tier: str
    status: str
    overdraft_limit: int
    balance: int
    reserved: int
    available: int
    durable: bool


class CreditOut(_Out):
    transaction_id: str
    balance: int
    durable: bool


class CheckOut(_Out):
    allowed: bool
    cost: int
    available: int


class ChargeOut(_Out, omit_defaults=True):
    transaction_id: str
    cost: int
    remaining: int
    shadow: ShadowDecision | None = None
    """Present for a shadow charge only (nothing was charged): what the charge would have
    done. ``transaction_id`` is then the shadow record's id, ``remaining`` the shadow balance."""
    pool: PoolPaymentOut | None = None
    """Present for a member of a pool (not on a replay): what its pool paid. ``remaining``
    is then what the member may still spend."""


class ChargeItemOut(_Out, omit_defaults=True):
    """What one charge of a batch came to: ``status`` is the status a single consume would
    have answered; a charge carries the consume's answer (``replayed`` when its idempotency
    key had charged already), a refusal the problem document a consume would answer."""

    status: int
    transaction_id: str | None = None
    cost: int | None = None
    remaining: int | None = None
    replayed: bool = False
    shadow: ShadowDecision | None = None
    """As in a consume's answer: present for a shadow charge only."""
    problem: dict[str, Any] | None = None
    pool: PoolPaymentOut | None = None
    """As in a consume's answer: present for a member of a pool."""


class ChargesOut(_Out):
    results: list[ChargeItemOut]
    """One per charge, in the request's order."""


class HoldOut(_Out):
    hold_id: str
    amount: int
    expires_at: datetime
    available: int


class ReleaseOut(_Out):
    released: int
    available: int


class SettleOut(_Out):
    transaction_id: str | None
    """The spend, or null when nothing was charged."""
    charged: int
    shortfall: int
    """The actual cost that was not charged: above the estimate plus its max overrun, or
    above what the account had."""
    released: int
    """The held credits given back."""
    remaining: int
    balance: int


class TransactionsOut(_Out):
    transactions: list[TransactionOut]
    next: str | None


class ResourcesOut(_Out):
    resources: dict[str, int]


class HealthOut(_Out):
    status: str


class ReadyOut(_Out):
    ready: bool
    redis: Literal["ok", "down", "needs_recovery"]
    postgres: Literal["ok", "down", "schema_behind"]
    outbox_lag: dict[str, Any] | None
    redis_memory: dict[str, Any] | None = None
    """Redis's used_memory and maxmemory (0: no limit) in bytes, and its eviction policy."""


class Problem(_Out):
    type: str
    title: str
    status: int
    detail: str
    code: str


REQUESTS: tuple[type[Struct], ...] = (
    AccountUpsert, CreditRequest, GrantRequest, VoidGrantRequest, CheckRequest, ConsumeRequest,
    BatchCharge, ChargesRequest, HoldRequest, CaptureRequest, ReleaseRequest, SettleRequest,
)  # fmt: skip
ANSWERS: tuple[type[Struct], ...] = (
    AccountOut, AccountWritten, CreditOut, GrantOut, GrantsOut, GrantMadeOut, VoidOut, CheckOut,
    ChargeOut, ChargeItemOut, ChargesOut, HoldOut, ReleaseOut, SettleOut,
    TransactionsOut, ResourcesOut, HealthOut, ReadyOut, Problem,
)  # fmt: skip

encode = msgspec.json.Encoder().encode
