"""What the engine's operations return: small frozen records, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

ShadowDecision = Literal[
    "charged", "insufficient_credits", "rate_limited", "account_banned", "account_not_found"
]
"""What a shadow charge records: what the charge would have done (``charged``), or why it
would have been refused."""
SHADOW_DECISIONS: tuple[str, ...] = get_args(ShadowDecision)


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """The tier's request-rate window after an admitted request (for RateLimit-* headers)."""

    limit: int
    remaining: int
    reset_ms: int


GRANT_SOURCES = ("renewal", "purchase", "promotion", "refund", "adjustment")
"""Where a grant's credits came from."""

STANDING_GRANTS = ("monthly", "purchased")
"""The ids of the two grants every account has (its monthly and purchased credits)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """Credits an account holds, spent in order of priority, then expiry, then age."""

    id: str
    source: str
    priority: int
    amount: int
    """What it granted (for a standing grant: what it holds now)."""
    remaining: int
    expires_at: datetime | None
    """None: never expires."""
    created_at: datetime | None
    """None for the standing grants."""


@dataclass(frozen=True, slots=True)
class GrantResult:
    """A new explicit grant."""

    grant_id: str
    transaction_id: str
    balance: int
    available: int
    replayed: bool
    outbox_entry_id: str
    expires_at: datetime | None = None
    """When what is left of it expires (None: never), as Redis fixed it."""


@dataclass(frozen=True, slots=True)
class VoidResult:
    """A voided grant: what was left of it was taken back by an adjust transaction."""

    transaction_id: str
    voided: int
    balance: int
    available: int
    replayed: bool
    outbox_entry_id: str = ""
    """The stream id of the adjust transaction in its partition's outbox (for the
    write-through)."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    allowed: bool
    cost: int
    available: int


@dataclass(frozen=True, slots=True)
class PoolPayment:
    """What a member's pool paid of one of its charges."""

    pool_id: str
    paid: int
    """Credits the pool paid (the rest, if any, came from the member's own credits)."""
    pool_balance: int
    """The pool's balance after the charge."""
    limit_remaining: int | None
    """What the pool may still pay for the member this period; None: the member has no limit."""


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """A consume or a capture: a spend transaction was written."""

    transaction_id: str
    cost: int
    remaining: int
    balance: int
    replayed: bool
    rate_limit: RateLimitState | None = None
    shadow: ShadowDecision | None = None
    """A shadow charge (nothing charged): what the charge would have done, one of
    :data:`SHADOW_DECISIONS`; ``transaction_id`` is then the shadow entry's id, ``cost`` what
    it would have cost and ``remaining`` the shadow balance after it. None for a charge."""
    pool: PoolPayment | None = None
    """For a member of a pool: what its pool paid (None for other accounts, and for a
    replayed charge)."""


@dataclass(frozen=True, slots=True)
class CreditResult:
    transaction_id: str
    balance: int
    available: int
    replayed: bool
    outbox_entry_id: str
    """The stream id of the transaction in its partition's outbox (for the write-through)."""


@dataclass(frozen=True, slots=True)
class RefundCount:
    """A spend as the ledger and the outbox count it: what it charged and what its refunds
    returned so far (starts Redis's count of the spend's refunds)."""

    cost: int
    refunded: int


@dataclass(frozen=True, slots=True)
class HoldResult:
    hold_id: str
    amount: int
    expires_at: datetime
    available: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class SettleResult:
    """A settled reservation: what was charged (a spend transaction, unless 0), what could
    not be (the cost above the held amount and its overrun, or above the credits), and what
    went back."""

    transaction_id: str | None
    charged: int
    shortfall: int
    released: int
    remaining: int
    balance: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    released: int
    available: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class UpsertResult:
    account_id: str
    created: bool
    tier: str
    status: str
    overdraft_limit: int
    balance: int
    available: int
    replayed: bool
    outbox_entry_ids: tuple[str, ...]
    """Stream ids this call appended: the account event, then the opening grant if any."""


@dataclass(frozen=True, slots=True)
class RenewResult:
    account_id: str
    renewed: bool
    granted: int
    expired: int
    balance: int
    reason: str
    """Why nothing happened: "" when renewed, "banned" or "already_renewed"."""


@dataclass(frozen=True, slots=True)
class Hold:
    hold_id: str
    amount: int
    expires_at: datetime
    resource: str
    units: int
    on_expiry: str = "release"
    """What its deadline does to it: "release", or "capture" (a reservation that says so)."""


@dataclass(frozen=True, slots=True)
class Membership:
    """An account's place in its pool (it is ``<pool_id>~<name>``)."""

    pool_id: str
    member_limit: int | None
    """The most credits the pool pays for it per period of the pool; None: no limit."""
    own_credits_first: bool
    used: int
    """What the pool paid for it in the pool's current period."""


@dataclass(frozen=True, slots=True)
class Account:
    """An account as Redis holds it now."""

    account_id: str
    tier: str
    status: str
    balance: int
    monthly_credits: int
    purchased_credits: int
    reserved: int
    available: int
    overdraft_limit: int
    created_at: datetime
    last_reset_at: datetime | None
    renewed_period: str
    holds: tuple[Hold, ...] = ()
    grants: tuple[Grant, ...] = ()
    """Every grant holding credits, in the order a spend takes from them."""
    membership: Membership | None = None
    """For a member of a pool: its limit and what the pool paid for it this period."""

    @property
    def next_expiry(self) -> datetime | None:
        """When the next of its grants expires (None: none does)."""
        return min((g.expires_at for g in self.grants if g.expires_at), default=None)
