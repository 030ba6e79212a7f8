"""What the simulation believes, built only from acknowledged answers.

Per account: both buckets (monthly credits are spent first and are what a reset renewal
expires), the open holds, and every acknowledged spend with what has been refunded of it.
Across accounts: every acknowledged transaction id, and the idempotency keys whose first
answer was remembered, so that a retry can be checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TIERS = {"free": (100, 100, "add"), "pro": (1000, 1000, "add"), "monthly": (500, 500, "reset")}
"""tier: (monthly grant, credit limit, renewal policy), as in the cluster's config."""

COSTS = {"api_call": 1, "premium_feature": 5}

NOT_DURABLE = " (not durable)"
"""Added to the kind of money in that PostgreSQL did not take when it was acknowledged."""


@dataclass
class Spend:
    account_id: str
    charged: int
    refunded: int = 0


@dataclass
class AccountModel:
    account_id: str
    tier: str
    overdraft_limit: int
    status: str = "active"
    monthly: int = 0
    purchased: int = 0
    holds: dict[str, int] = field(default_factory=dict)
    renewed_period: str | None = ""
    """The last period renewed; None once a recovery has made it unknowable to the model."""
    opened_durable: bool = True
    """Whether its opening was acknowledged as in the ledger (``"durable": true``)."""

    @property
    def balance(self) -> int:
        return self.monthly + self.purchased

    @property
    def reserved(self) -> int:
        return sum(self.holds.values())

    @property
    def available(self) -> int:
        return self.balance - self.reserved + self.overdraft_limit

    def spend(self, amount: int, *, from_hold: bool = False) -> None:
        """Monthly credits first, then purchased ones (which may go below zero)."""
        monthly = max(self.monthly, 0) if from_hold else self.monthly
        from_monthly = min(monthly, amount)
        self.monthly -= from_monthly
        self.purchased -= amount - from_monthly

    def renew(self, period: str) -> None:
        grant, limit, policy = TIERS[self.tier]
        if self.status != "active" or self.renewed_period == period:
            return
        if policy == "reset":
            self.monthly = grant
        else:
            self.monthly += max(0, min(grant, limit - self.balance))
        self.renewed_period = period


@dataclass
class Remembered:
    """A write whose first answer the gateway keeps under its idempotency key."""

    account_id: str
    path: str
    body: dict[str, Any]
    key: str
    scope: str
    answer: dict[str, Any]
    rebuilt: bool = False
    """Redis lost the record and recovery rebuilt it from the ledger row: the answer replays,
    but its available credits count no holds (the holds were lost with Redis)."""

    @property
    def capture(self) -> bool:
        return self.path.endswith("/capture")


@dataclass
class Model:
    accounts: dict[str, AccountModel] = field(default_factory=dict)
    spends: dict[str, Spend] = field(default_factory=dict)
    acknowledged: dict[str, str] = field(default_factory=dict)
    """transaction id -> its type, for every transaction an answer named."""
    remembered: list[Remembered] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)
    """Acknowledged transactions that a FLUSHALL took before they reached the ledger."""
    period_index: int = 0
    opened: int = 0
    """Accounts opened so far (names stay unique when a lost one is dropped)."""

    def acknowledge(self, transaction_id: str, kind: str) -> None:
        if transaction_id in self.acknowledged:
            raise AssertionError(f"transaction id {transaction_id} acknowledged twice")
        self.acknowledged[transaction_id] = kind

    def next_period(self) -> str:
        self.period_index += 1
        year, month = divmod(self.period_index - 1, 12)
        return f"{2100 + year}-{month + 1:02d}"

    @property
    def last_period(self) -> str | None:
        if self.period_index == 0:
            return None
        year, month = divmod(self.period_index - 1, 12)
        return f"{2100 + year}-{month + 1:02d}"

    def drop_account(self, account_id: str) -> None:
        """Forget an account whose opening a FLUSHALL took before it reached the ledger."""
        del self.accounts[account_id]
        self.spends = {t: s for t, s in self.spends.items() if s.account_id != account_id}
        self.remembered = [r for r in self.remembered if r.account_id != account_id]

    def forget_holds(self) -> None:
        """Holds are not durable: after Redis lost its data no account has any."""
        for account in self.accounts.values():
            account.holds.clear()
