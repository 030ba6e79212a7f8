"""What a batch's transactions do to ``credit_grants`` (docs/grants.md), in the transaction
that inserts them.

Only the transactions a batch actually inserted count, so a batch applied twice (a flush
re-run after a crash, a write-through that ran ahead) changes each grant once:

- a ``grant`` transaction with a grant id creates the grant (remaining = amount);
- a spend's draws (``gd``) lower the remaining of each grant it names; a grant they use up
  ends as ``spent``;
- an ``expire`` or ``adjust`` naming a grant lowers its remaining by what it took (minus the
  amount) and ends it as ``expired`` or ``voided``.

The decrements are sums, so their order does not matter: a batch adds them up per grant and
sends one update. Grants are created first, so a batch may create a grant and draw on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg

from quotagate.ledger.outbox import TransactionEntry

_MS = "(timestamptz 'epoch' + {} * interval '1 millisecond')"

END_REASONS = {"expire": "expired", "adjust": "voided"}
"""The end of a grant a transaction of each type names."""

CREATE_SQL = f"""
INSERT INTO credit_grants
    (id, account_id, amount, remaining, source, priority, expires_at, created_at,
     transaction_id)
SELECT g.id, g.account_id, g.amount, g.amount, g.source, g.priority,
       {_MS.format("g.expires_ms")}, {_MS.format("g.created_ms")}, g.transaction_id
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::smallint[], $6::bigint[],
            $7::bigint[], $8::text[])
     AS g(id, account_id, amount, source, priority, expires_ms, created_ms, transaction_id)
ORDER BY g.id
ON CONFLICT (id) DO NOTHING
"""

TAKE_SQL = f"""
UPDATE credit_grants AS g SET
    remaining = g.remaining - c.taken,
    ended_at = CASE
        WHEN g.ended_at IS NOT NULL THEN g.ended_at
        WHEN c.reason IS NOT NULL THEN {_MS.format("c.ended_ms")}
        WHEN g.remaining - c.taken <= 0 THEN {_MS.format("c.last_ms")}
    END,
    end_reason = CASE
        WHEN g.end_reason IS NOT NULL THEN g.end_reason
        WHEN c.reason IS NOT NULL THEN c.reason
        WHEN g.remaining - c.taken <= 0 THEN 'spent'
    END
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[])
     AS c(id, taken, last_ms, ended_ms, reason)
WHERE g.id = c.id
"""
"""A grant's ``ended_at`` and ``end_reason`` are set once: by its expiry or void, else when
draws use it up (at the last draw of the batch that did)."""


@dataclass(slots=True)
class GrantChange:
    """What one batch takes from one grant."""

    taken: int = 0
    """Credits drawn, expired and voided."""
    last_ms: int = 0
    """Time of the batch's last transaction that took from it."""
    ended_ms: int | None = None
    reason: str | None = None
    """``expired`` or ``voided`` when a transaction of the batch ended it."""


def grant_changes(entries: Iterable[TransactionEntry]) -> dict[str, GrantChange]:
    """Per grant id, what the entries' draws, expiries and voids take from it."""
    changes: dict[str, GrantChange] = {}

    def take(grant_id: str, credits: int, ms: int) -> GrantChange:
        change = changes.setdefault(grant_id, GrantChange())
        change.taken += credits
        change.last_ms = max(change.last_ms, ms)
        return change

    for e in entries:
        for grant_id, credits in e.grant_draws:
            take(grant_id, credits, e.created_ms)
        if e.grant_id is not None and e.type in END_REASONS:
            change = take(e.grant_id, -e.amount, e.created_ms)
            change.ended_ms, change.reason = e.created_ms, END_REASONS[e.type]
    return changes


async def apply_grant_effects(
    conn: asyncpg.Connection, inserted: Sequence[TransactionEntry]
) -> None:
    """Create and lower grants as the just-inserted transactions say, in the caller's
    transaction. Raises what PostgreSQL raises for a value it refuses (the flush's checked
    path then finds the entry)."""
    created = [e for e in inserted if e.creates_grant]
    if created:
        await conn.execute(
            CREATE_SQL,
            [e.grant_id for e in created],
            [e.account_id for e in created],
            [e.amount for e in created],
            [e.grant_source for e in created],
            [e.grant_priority for e in created],
            [e.grant_expires_ms for e in created],
            [e.created_ms for e in created],
            [e.id for e in created],
        )
    changes = grant_changes(inserted)
    if changes:
        ids = sorted(changes)  # one lock order for every flush
        await conn.execute(
            TAKE_SQL,
            ids,
            [changes[i].taken for i in ids],
            [changes[i].last_ms for i in ids],
            [changes[i].ended_ms for i in ids],
            [changes[i].reason for i in ids],
        )
