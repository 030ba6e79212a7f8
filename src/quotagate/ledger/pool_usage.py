"""What a pool paid for each of its members in the pool's current period (docs/pools.md).

A member's ``pu`` in Redis counts the credits its pool paid for its charges since the pool's
last renewal. The ledger's side is the sum of the pool's spend rows that name the member,
from the pool's ``last_reset_at`` on: the instant the pool's renewed period (``rp``) comes
from when recovery restores it, so recovery and reconciliation count the same rows. Refunds
do not lower it, as they do not lower ``pu``. A spend made in the very millisecond of the
renewal, before it, is counted in the new period (the ledger keeps milliseconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from quotagate.ledger import members

MEMBER_PERIODS_SQL = """
SELECT m.member_id, p.account_id IS NOT NULL AS pool_known, p.renewed_period,
       p.last_reset_at, coalesce(paid.credits, 0)::bigint AS paid
FROM unnest($1::text[], $2::text[]) AS m(member_id, pool_id)
LEFT JOIN user_credits p ON p.account_id = m.pool_id
CROSS JOIN LATERAL (
    SELECT -sum(t.amount) AS credits
    FROM credit_transactions t
    WHERE t.account_id = m.pool_id AND t.member_id = m.member_id AND t.type = 'spend'
      AND t.created_at >= coalesce(p.last_reset_at, '-infinity')
) paid
"""
"""Per member: its pool's row (renewed period, last reset) and what the pool's spends naming
the member since that reset sum to (ix_credit_transactions_member_history)."""


@dataclass(frozen=True, slots=True)
class MemberPeriod:
    """A member's usage of its pool in the pool's period, as the ledger holds it."""

    member_id: str
    pool_known: bool
    """False: the ledger has no row of the pool."""
    pool_renewed_period: str | None
    pool_last_reset_at: datetime | None
    """Where the period starts; None: the pool was never reset (its whole life counts)."""
    paid: int
    """Credits the pool's spends paid for the member since then."""

    @property
    def since_ms(self) -> int | None:
        reset = self.pool_last_reset_at
        return None if reset is None else round(reset.timestamp() * 1000)


async def member_periods(
    conn: asyncpg.Connection, member_ids: Sequence[str]
) -> dict[str, MemberPeriod]:
    """The period usage of each member id given (ids that are no member are left out)."""
    chosen = [(m, pool) for m in member_ids if (pool := members.pool_of(m)) is not None]
    if not chosen:
        return {}
    rows = await conn.fetch(
        MEMBER_PERIODS_SQL, [m for m, _ in chosen], [pool for _, pool in chosen]
    )
    found = {}
    for r in rows:
        found[r["member_id"]] = MemberPeriod(
            r["member_id"], r["pool_known"], r["renewed_period"], r["last_reset_at"],
            int(r["paid"]),
        )  # fmt: skip
    return found
