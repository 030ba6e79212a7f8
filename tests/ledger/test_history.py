"""History: ledger rows and pending outbox entries, newest first, each once, in pages."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from quotagate.engine import CreditEngine
from quotagate.errors import ValidationError
from quotagate.ledger import Ledger, flush_all

Acct = Callable[[str], str]


async def _all_pages(ledger: Ledger, engine: CreditEngine, a: str, limit: int) -> list[str]:
    seen: list[str] = []
    before = None
    while True:
        page = await ledger.history(engine, a, limit=limit, before=before)
        assert len(page.transactions) <= limit
        seen += [t.id for t in page.transactions]
        if page.next is None:
            return seen
        assert page.next == page.transactions[-1].id
        before = page.next


async def test_pending_entries_are_merged_newest_first_and_marked(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a, other = acct("h"), acct("h-other")
    await lengine.upsert_account(a)
    await lengine.upsert_account(other)
    flushed = [(await lengine.consume(a, "api_call", 1)).transaction_id for _ in range(4)]
    await flush_all(lengine, ledger)
    await lengine.consume(other, "api_call", 1)
    grant = await lengine.credit(a, 9, "grant", metadata={"why": "promo"})
    assert await ledger.write_through(lengine, a, [grant.outbox_entry_id])  # in both places
    waiting = [(await lengine.consume(a, "api_call", 2)).transaction_id for _ in range(3)]
    await lengine.upsert_account(a, tier="pro")  # an account event: never in history

    page = await ledger.history(lengine, a, limit=50)
    got = [(t.id, t.pending) for t in page.transactions]
    opening = page.transactions[-1]
    assert got == (
        [(i, True) for i in reversed(waiting)]
        + [(grant.transaction_id, False)]
        + [(i, False) for i in reversed(flushed)]
        + [(opening.id, False)]
    )
    assert (opening.type, opening.amount) == ("grant", 100)
    assert page.next is None
    g = page.transactions[3]
    assert (g.amount, g.metadata, g.resource, g.units, g.balance_after) == (
        9,
        {"why": "promo"},
        None,
        None,
        105,
    )
    w = page.transactions[0]
    assert (w.amount, w.type, w.resource, w.units, w.description) == (
        -2,
        "spend",
        "api_call",
        2,
        None,
    )
    times = [t.created_at for t in page.transactions]
    assert times == sorted(times, reverse=True)


async def test_pages_cover_every_transaction_once_across_ledger_and_outbox(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("pages")
    await lengine.upsert_account(a, tier="pro")
    for _ in range(17):
        await lengine.consume(a, "api_call", 1)
    await flush_all(lengine, ledger)
    for _ in range(6):
        await lengine.consume(a, "api_call", 1)
    everything = [t.id for t in (await ledger.history(lengine, a, limit=100)).transactions]
    assert len(everything) == 24
    for limit in (1, 5, 7, 24):
        assert await _all_pages(ledger, lengine, a, limit) == everything


async def test_bad_pages_are_refused(lengine: CreditEngine, ledger: Ledger, acct: Acct) -> None:
    a, b = acct("bad-page"), acct("bad-page-2")
    await lengine.upsert_account(a)
    await lengine.upsert_account(b)
    theirs = await lengine.consume(b, "api_call", 1)
    for limit in (0, 1001, True, "5"):
        with pytest.raises(ValidationError, match="limit"):
            await ledger.history(lengine, a, limit=limit)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="before does not name"):
        await ledger.history(lengine, a, before="0190aaaa-0000-7000-8000-000000000000")
    with pytest.raises(ValidationError, match="before does not name"):
        await ledger.history(lengine, a, before=theirs.transaction_id)
    await flush_all(lengine, ledger)
    with pytest.raises(ValidationError, match="before does not name"):
        await ledger.history(lengine, a, before=theirs.transaction_id)


async def test_an_unknown_account_has_an_empty_history(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    page = await ledger.history(lengine, acct("nobody"))
    assert (page.transactions, page.next) == ([], None)
