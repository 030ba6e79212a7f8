"""A population of accounts over three tiers and both renewal policies, with what renewal owes each."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from quotagate.config import Tier
from quotagate.engine import CreditEngine

RENEWAL_CONFIG = """
partitions = 8
opening_grant = true
[resources]
unit = 1
[tiers.free]
credit_limit = 100
monthly_grant = 100
renewal = "add"
[tiers.pro]
credit_limit = 1000
monthly_grant = 300
renewal = "add"
[tiers.enterprise]
credit_limit = 10000
monthly_grant = 5000
renewal = "reset"
"""
"""Free adds up to its cap (the cap binds: balances start near it), pro adds in full, enterprise resets."""

TIERS = ("free", "pro", "enterprise")


@dataclass(frozen=True)
class Planned:
    account_id: str
    tier: str
    banned: bool
    spent: int
    bought: int


def plan(n: int) -> list[Planned]:
    """Deterministic variety: every tier, some spending, some buying, every tenth banned."""
    out = []
    for i in range(n):
        tier = TIERS[i % 3]
        out.append(
            Planned(
                account_id=f"acct-{i:06d}",
                tier=tier,
                banned=i % 10 == 7,
                spent=(i * 7) % 90,
                bought=(i * 13) % 50 if i % 4 == 0 else 0,
            )
        )
    return out


async def populate(engine: CreditEngine, planned: list[Planned], *, chunk: int = 1000) -> None:
    for i in range(0, len(planned), chunk):
        part = planned[i : i + chunk]
        await asyncio.gather(*(engine.upsert_account(p.account_id, tier=p.tier) for p in part))
        await asyncio.gather(
            *(engine.consume(p.account_id, "unit", p.spent) for p in part if p.spent)
        )
        await asyncio.gather(*(engine.credit(p.account_id, p.bought) for p in part if p.bought))
        await asyncio.gather(
            *(engine.upsert_account(p.account_id, status="banned") for p in part if p.banned)
        )


def expected_after_renewal(p: Planned, tier: Tier) -> tuple[int, int]:
    """(monthly, purchased) after one renewal, from the opening grant and the plan."""
    monthly, purchased = tier.monthly_grant - p.spent, p.bought
    if p.banned:
        return monthly, purchased
    if tier.renewal == "reset":
        return tier.monthly_grant, purchased
    room = max(0, tier.credit_limit - (monthly + purchased))
    return monthly + min(tier.monthly_grant, room), purchased
