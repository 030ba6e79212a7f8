"""The alert rules' decisions, as plain functions of numbers (no I/O): what fires, what
re-arms. :mod:`quotagate.alerts.detect` feeds them what the flush saw and the ledger holds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from quotagate.config import BalanceThreshold, Consumption, Tier


@dataclass(frozen=True, slots=True)
class Crossings:
    fired_at: list[str]
    """The transactions whose balance went below the threshold while the rule was armed."""
    armed: bool
    """Whether the rule is armed after the last transaction."""


def threshold_credits(rule: BalanceThreshold, tier: Tier | None) -> int | None:
    """The threshold in credits; None when it is a percentage and the tier is unknown."""
    if rule.below is not None:
        return rule.below
    if tier is None or rule.below_percent is None:
        return None
    return math.ceil(tier.monthly_grant * rule.below_percent / 100)


def walk_balance(balances: Sequence[tuple[str, int]], threshold: int, armed: bool) -> Crossings:
    """Walk (transaction id, balance after) in the order Redis made them: an armed rule fires
    at the first balance below ``threshold`` and disarms; a balance at or above it re-arms.
    Every dip inside one batch counts, not only the batch's last balance."""
    fired: list[str] = []
    for transaction_id, balance in balances:
        if armed and balance < threshold:
            fired.append(transaction_id)
            armed = False
        elif not armed and balance >= threshold:
            armed = True
    return Crossings(fired, armed)


def usual_rate(windows: Sequence[int], alpha: float) -> float:
    """Exponentially weighted average of earlier windows' spends, oldest first (0 for none)."""
    if not windows:
        return 0.0
    average = float(windows[0])
    for spent in windows[1:]:
        average = alpha * spent + (1 - alpha) * average
    return average


def unusual(rule: Consumption, spent: int, earlier: Sequence[int]) -> tuple[bool, float]:
    """Whether ``spent`` in the current window is unusual under ``rule``, and the usual rate
    it was compared with. Below ``min_credits`` nothing is unusual."""
    usual = usual_rate(earlier, rule.alpha)
    if spent < rule.min_credits:
        return False, usual
    over_ceiling = rule.ceiling is not None and spent > rule.ceiling
    over_usual = rule.multiple is not None and spent > rule.multiple * usual
    return over_ceiling or over_usual, usual


def applies(rule_tier: str | None, rule_account: str | None, tier: str, account_id: str) -> bool:
    """A rule for one account, for one tier, or (neither named) for every account."""
    if rule_account is not None:
        return rule_account == account_id
    return rule_tier is None or rule_tier == tier
