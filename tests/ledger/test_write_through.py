"""Money in is written through: in the ledger before the answer, harmless to the flush after."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from tests.ledger.support import assert_books_balance, ledger_rows
from tests.support.servers import free_port

from quotagate.engine import CreditEngine
from quotagate.errors import InvalidAccountId
from quotagate.ledger import Ledger, flush_all

Acct = Callable[[str], str]


async def test_a_grant_is_in_the_ledger_at_once_and_the_flush_skips_it(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("wt")
    opened = await lengine.upsert_account(a, tier="pro")
    assert await ledger.write_through(lengine, a, list(opened.outbox_entry_ids))
    grant = await lengine.credit(a, 250, "grant", description="purchase")
    assert await ledger.write_through(lengine, a, [grant.outbox_entry_id])

    rows = await ledger_rows(ledger, [a])
    assert sorted(r["amount"] for r in rows) == [250, 1000]
    snap = (await ledger.snapshots([a]))[a]
    assert (snap.credits, snap.tier) == (1250, "pro")
    outbox = lengine.keys.outbox(lengine.keys.partition_of(a))
    assert await lengine.redis.xlen(outbox) == 3  # write-through never deletes

    results = await flush_all(lengine, ledger)
    assert sum(r.duplicates for r in results) == 2
    assert sum(r.inserted for r in results) == 0
    assert (await ledger.snapshots([a]))[a].credits == 1250
    assert await lengine.redis.xlen(outbox) == 0
    await assert_books_balance(lengine, ledger, [a])


async def test_postgres_down_gives_false_fast_and_the_outbox_keeps_the_grant(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("down")
    await lengine.upsert_account(a)
    grant = await lengine.credit(a, 40, "earn")
    down = await Ledger.connect(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    try:
        started = time.monotonic()
        assert not await down.write_through(lengine, a, [grant.outbox_entry_id])
        assert time.monotonic() - started < 2
    finally:
        await down.aclose()
    assert await ledger_rows(ledger, [a]) == []
    await flush_all(lengine, ledger)
    assert grant.transaction_id in {r["id"] for r in await ledger_rows(ledger, [a])}
    await assert_books_balance(lengine, ledger, [a])


async def test_entries_of_another_account_are_refused_and_nothing_written(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("mine")
    same = lengine.keys.partition_of(a)
    b = next(x for i in range(1000) if lengine.keys.partition_of(x := acct(f"t{i}")) == same)
    await lengine.upsert_account(a)
    await lengine.upsert_account(b)
    grant = await lengine.credit(b, 10, "grant")
    with pytest.raises(ValueError, match="not of account"):
        await ledger.write_through(lengine, a, [grant.outbox_entry_id])
    with pytest.raises(InvalidAccountId):
        await ledger.write_through(lengine, "bad id!", [grant.outbox_entry_id])
    assert await ledger_rows(ledger, [a, b]) == []


async def test_nothing_to_write_or_already_flushed_is_durable(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("gone")
    await lengine.upsert_account(a)
    grant = await lengine.credit(a, 10, "grant")
    assert await ledger.write_through(lengine, a, [])
    await flush_all(lengine, ledger)  # flushed and deleted: the entry is in the ledger
    assert await ledger.write_through(lengine, a, [grant.outbox_entry_id])
