"""The books (Redis = snapshot + pending, snapshot = sum of rows), and the pending effect reconciliation builds on."""

from __future__ import annotations

from collections.abc import Callable

from quotagate.engine import CreditEngine
from quotagate.ledger import Ledger, PendingEffect, account_books, flush_all, pending_effects

Acct = Callable[[str], str]


async def test_pending_effect_leaves_out_what_the_ledger_already_has(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("pend")
    opened = await lengine.upsert_account(a)
    assert await ledger.write_through(lengine, a, list(opened.outbox_entry_ids))
    await lengine.consume(a, "api_call", 7)
    grant = await lengine.credit(a, 20, "grant")
    assert await ledger.write_through(lengine, a, [grant.outbox_entry_id])
    await lengine.consume(a, "premium_feature", 2)

    pending = await pending_effects(lengine, ledger, lengine.keys.partition_of(a))
    assert pending[a] == PendingEffect(credits=-17, monthly_credits=-17, transactions=2)
    [books] = await account_books(lengine, ledger, [a])
    assert (books.redis_credits, books.snapshot_credits, books.pending.credits) == (103, 120, -17)
    assert books.ledger_credits == 120
    assert books.balanced

    await flush_all(lengine, ledger)
    assert a not in await pending_effects(lengine, ledger, lengine.keys.partition_of(a))


async def test_books_show_drift_when_the_snapshot_is_wrong(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a, b = acct("drift"), acct("never-flushed")
    await lengine.upsert_account(a)
    await lengine.upsert_account(b)
    await flush_all(lengine, ledger, partitions=[lengine.keys.partition_of(a)])
    async with ledger.pool.acquire() as conn:
        await conn.execute("UPDATE user_credits SET credits = credits + 5 WHERE account_id = $1", a)
    books = {x.account_id: x for x in await account_books(lengine, ledger, [a, b])}
    assert (books[a].drift, books[a].ledger_drift, books[a].balanced) == (-5, 5, False)
    if lengine.keys.partition_of(b) != lengine.keys.partition_of(a):
        assert books[b].snapshot is None and books[b].pending.credits == 100
        assert books[b].balanced
