"""The flush: every transaction once, balance changes only for rows inserted, entries
deleted only after the commit, account events never going back in time."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Callable
from typing import cast

from tests.ledger.support import assert_books_balance, ledger_rows

from quotagate.engine import CreditEngine
from quotagate.engine.results import RefundCount
from quotagate.ledger import FlushLease, Ledger, flush_all, flush_partition
from quotagate.ledger.batch import build_batch
from quotagate.ledger.flush import apply_batch as apply_flush_batch
from quotagate.ledger.outbox import RawEntries, StreamReader, read_all

Acct = Callable[[str], str]


async def _traffic(engine: CreditEngine, accounts: list[str]) -> list[str]:
    """Opening grants, spends, grants, refunds, a capture: the transaction ids written."""
    txns: list[str] = []
    for a in accounts:
        await engine.upsert_account(a, tier="pro")
    for i, a in enumerate(accounts):
        for _ in range(5):
            txns.append((await engine.consume(a, "api_call", 7)).transaction_id)
        txns.append((await engine.credit(a, 40 + i, "grant", description="top-up")).transaction_id)
        refund = await engine.credit(
            a, 3, "refund", metadata={"order": i}, refund_of=txns[-2], counted=RefundCount(7, 0)
        )
        txns.append(refund.transaction_id)
        hold = await engine.hold(a, amount=30)
        txns.append((await engine.capture(a, hold.hold_id, 12)).transaction_id)
    return txns


async def test_flush_copies_each_transaction_once_and_the_books_balance(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    accounts = [acct(f"a{i}") for i in range(12)]
    txns = await _traffic(lengine, accounts)
    results = await flush_all(lengine, ledger, batch_size=7)
    assert gc.isenabled()  # paused while the partitions flushed, back on after the last

    rows = await ledger_rows(ledger, accounts)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(txns) + len(accounts)  # + opening grants
    assert set(txns) <= set(ids)
    assert sum(r.inserted for r in results) == len(ids)
    assert sum(r.duplicates for r in results) == 0
    assert sum(r.events for r in results) == len(accounts)
    for p in range(lengine.config.partitions):
        assert await lengine.redis.xlen(lengine.keys.outbox(p)) == 0
    await assert_books_balance(lengine, ledger, accounts)
    snaps = await ledger.snapshots(accounts)
    assert {s.tier for s in snaps.values()} == {"pro"}


async def test_rows_carry_what_the_script_wrote(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("fields")
    await lengine.upsert_account(a)
    spend = await lengine.consume(
        a, "premium_feature", 2, description="report", metadata={"pages": 3},
        idempotency_key="req-7",
    )  # fmt: skip
    grant = await lengine.credit(a, 25, "earn")
    entries = await read_all(lengine, lengine.keys.partition_of(a))
    await flush_all(lengine, ledger)

    rows = {r["id"]: r for r in await ledger_rows(ledger, [a])}
    s, g = rows[spend.transaction_id], rows[grant.transaction_id]
    assert (s["amount"], s["type"], s["resource"], s["units"]) == (
        -10,
        "spend",
        "premium_feature",
        2,
    )
    assert (s["description"], s["metadata"], s["idempotency_key"]) == (
        "report",
        '{"pages": 3}',
        "req-7",
    )
    assert s["balance_after"] == spend.balance
    spend_entry = next(e for e in entries if getattr(e, "id", "") == spend.transaction_id)
    assert int(s["created_at"].timestamp() * 1000) == spend_entry.created_ms
    assert (g["amount"], g["type"], g["resource"], g["units"], g["metadata"]) == (
        25, "earn", None, None, None,
    )  # fmt: skip


async def test_a_batch_committed_but_not_deleted_is_not_counted_twice(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    """A worker died between the commit and the trim: the next flush finds the batch again."""
    accounts = [acct(f"c{i}") for i in range(6)]
    await _traffic(lengine, accounts)
    partition = lengine.keys.partition_of(accounts[0])
    entries = await read_all(lengine, partition)
    applied = await ledger.apply_batch(
        entries, default_tier="free", partition=partition
    )  # committed, entries left in the stream
    assert applied.inserted == applied.transactions > 0
    before = await ledger.snapshots(accounts)

    result = await flush_partition(lengine, ledger, partition)
    assert (result.inserted, result.duplicates) == (0, applied.transactions)
    assert result.deleted == len(entries)
    after = await ledger.snapshots(accounts)
    assert {a: s.credits for a, s in after.items()} == {a: s.credits for a, s in before.items()}
    await flush_all(lengine, ledger)
    await assert_books_balance(lengine, ledger, accounts)


async def test_two_flushes_of_the_same_entries_at_once_insert_each_row_once(
    lengine: CreditEngine, ledger: Ledger, ledger_url: str, acct: Acct
) -> None:
    """What a flush that outlived its lease and its successor do: no lease between them."""
    accounts = [acct(f"d{i}") for i in range(10)]
    await _traffic(lengine, accounts)
    other = await Ledger.connect(ledger_url)
    try:
        for p in range(lengine.config.partitions):
            entries = await read_all(lengine, p)
            if not entries:
                continue
            a, b = await asyncio.gather(
                ledger.apply_batch(entries, default_tier="free", partition=p),
                other.apply_batch(entries, default_tier="free", partition=p),
            )
            assert a.inserted + b.inserted == a.transactions == b.transactions
    finally:
        await other.aclose()
    await flush_all(lengine, ledger)
    await assert_books_balance(lengine, ledger, accounts)


async def test_an_older_account_event_never_overwrites_a_newer_one(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("tiers")
    first = await lengine.upsert_account(a, tier="free")
    second = await lengine.upsert_account(a, tier="pro", status="banned", overdraft_limit=5)
    # The newer event reaches the ledger first (a write-through ran ahead of the flush)...
    assert await ledger.write_through(lengine, a, [second.outbox_entry_ids[0]])
    # ...then a flush meets the older one alone in its batch.
    partition = lengine.keys.partition_of(a)
    older = [
        e for e in await read_all(lengine, partition) if e.stream_id == first.outbox_entry_ids[0]
    ]
    await ledger.apply_batch(older, default_tier="free")
    snap = (await ledger.snapshots([a]))[a]
    assert (snap.tier, snap.status, snap.overdraft_limit) == ("pro", "banned", 5)

    await flush_partition(lengine, ledger, partition, batch_size=1)
    snap = (await ledger.snapshots([a]))[a]
    assert (snap.tier, snap.status, snap.overdraft_limit) == ("pro", "banned", 5)
    await assert_books_balance(lengine, ledger, [a])


async def test_the_newest_event_of_a_batch_wins(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("batch-events")
    await lengine.upsert_account(a, tier="free")
    await lengine.upsert_account(a, tier="pro")
    await lengine.upsert_account(a, status="banned")
    result = await flush_partition(lengine, ledger, lengine.keys.partition_of(a))
    assert result.events == 1  # three events, one account: the last one is applied
    snap = (await ledger.snapshots([a]))[a]
    assert (snap.tier, snap.status) == ("pro", "banned")


async def test_a_transaction_before_its_account_event_gets_a_row_the_event_completes(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("early")
    await lengine.upsert_account(a, tier="pro")
    grant = await lengine.credit(a, 70, "grant")
    assert await ledger.write_through(lengine, a, [grant.outbox_entry_id])
    snap = (await ledger.snapshots([a]))[a]
    assert (snap.credits, snap.tier) == (70, lengine.config.default_tier)  # a placeholder

    await flush_partition(lengine, ledger, lengine.keys.partition_of(a))
    snap = (await ledger.snapshots([a]))[a]
    assert (snap.credits, snap.monthly_credits, snap.tier) == (1070, 1000, "pro")
    await assert_books_balance(lengine, ledger, [a])


async def test_renewal_moves_the_monthly_bucket_and_the_last_reset(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("renew")
    await lengine.upsert_account(a, tier="monthly")
    await lengine.consume(a, "api_call", 120)
    await lengine.credit(a, 30, "grant")
    await flush_all(lengine, ledger)
    opened = (await ledger.snapshots([a]))[a]
    renewed = await lengine.renew(a, period="2099-01")
    assert (renewed.renewed, renewed.expired, renewed.granted) == (True, 380, 500)
    await flush_all(lengine, ledger)
    snap = (await ledger.snapshots([a]))[a]
    assert (snap.credits, snap.monthly_credits) == (530, 500)
    assert opened.last_reset_at is not None and snap.last_reset_at is not None
    assert snap.last_reset_at >= opened.last_reset_at
    await assert_books_balance(lengine, ledger, [a])


async def test_one_flush_per_partition_and_a_dead_holders_lease_expires(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("lease")
    await lengine.upsert_account(a)
    partition = lengine.keys.partition_of(a)

    held = await FlushLease.acquire(lengine, partition, ttl_seconds=0.3)
    assert held is not None
    assert await FlushLease.acquire(lengine, partition, ttl_seconds=5) is None
    busy = await flush_partition(lengine, ledger, partition)
    assert busy.busy and busy.batches == 0
    assert await lengine.redis.xlen(lengine.keys.outbox(partition)) == 2

    await asyncio.sleep(0.4)  # the holder "died": its lease runs out
    result = await flush_partition(lengine, ledger, partition)
    assert not result.busy and result.inserted == 1 and result.deleted == 2
    # The old holder wakes up: it can neither renew nor release what is no longer its own.
    taken = await FlushLease.acquire(lengine, partition, ttl_seconds=5)
    assert taken is not None
    assert not await held.renew()
    await held.release()
    assert await lengine.redis.get(taken.key) == taken.token
    await taken.release()
    assert await lengine.redis.get(taken.key) is None


async def test_flush_all_waits_for_a_running_flush_then_flushes(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("wait")
    await lengine.upsert_account(a)
    partition = lengine.keys.partition_of(a)
    held = await FlushLease.acquire(lengine, partition, ttl_seconds=5)
    assert held is not None
    asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(held.release()))
    results = await flush_all(lengine, ledger, partitions=[partition])
    assert [(r.busy, r.inserted, r.events) for r in results] == [(False, 1, 1)]


async def test_values_copy_would_misread_reach_the_ledger_unchanged(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("quoting")
    await lengine.upsert_account(a)
    nasty = 'tab\there\nnew line\r\x1fsep\x01quote\\back "dq" é'
    meta = {"path": "C:\\x", "q": '"', "note": nasty}
    spend = await lengine.consume(a, "api_call", 1, description=nasty, metadata=meta)
    plain = await lengine.consume(a, "api_call", 1, description="plain", idempotency_key="k-1")
    await flush_all(lengine, ledger)
    rows = {r["id"]: r for r in await ledger_rows(ledger, [a])}
    assert rows[spend.transaction_id]["description"] == nasty
    assert json.loads(rows[spend.transaction_id]["metadata"]) == meta
    assert (
        rows[plain.transaction_id]["description"],
        rows[plain.transaction_id]["idempotency_key"],
    ) == ("plain", "k-1")
    await assert_books_balance(lengine, ledger, [a])


async def test_a_written_through_grant_is_looked_up_and_left_out(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("looked-up")
    await lengine.upsert_account(a)
    await lengine.consume(a, "api_call", 4)
    grant = await lengine.credit(a, 30, "grant")
    assert await ledger.write_through(lengine, a, [grant.outbox_entry_id])
    result = await flush_partition(lengine, ledger, lengine.keys.partition_of(a))
    # the opening grant, the spend: inserted; the grant written through: a duplicate
    assert (result.transactions, result.inserted, result.duplicates) == (3, 2, 1)
    await assert_books_balance(lengine, ledger, [a])


async def test_the_same_entry_twice_in_the_stream_is_one_row(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("twice")
    await lengine.upsert_account(a)
    partition = lengine.keys.partition_of(a)
    stream = lengine.keys.outbox(partition)
    await lengine.consume(a, "api_call", 6)
    [(_, fields)] = cast(RawEntries, await lengine.redis.xrevrange(stream, count=1))
    await lengine.redis.xadd(stream, fields)  # type: ignore[arg-type]  # redis-py wants an invariant Dict of its own unions
    result = await flush_partition(lengine, ledger, partition)
    assert (result.transactions, result.inserted) == (2, 2)  # the opening grant, the spend
    snap = (await ledger.snapshots([a]))[a]
    assert snap.credits == 100 - 6


async def test_two_flushes_of_the_same_batch_at_once_insert_it_once(
    lengine: CreditEngine, ledger: Ledger, ledger_url: str, acct: Acct
) -> None:
    """The fast path of both: one COPY waits for the other's commit, fails on the primary
    key, and its batch goes the checked way, where nothing is new."""
    accounts = [acct(f"f{i}") for i in range(10)]
    await _traffic(lengine, accounts)
    other = await Ledger.connect(ledger_url)
    try:
        for p in range(lengine.config.partitions):
            raw = await StreamReader(lengine).read(p, 10_000)
            if not raw:
                continue
            one, two = build_batch(raw), build_batch(raw)
            a, b = await asyncio.gather(
                apply_flush_batch(ledger, one, default_tier="free", partition=p),
                apply_flush_batch(other, two, default_tier="free", partition=p),
            )
            assert a.inserted + b.inserted == a.transactions == b.transactions
    finally:
        await other.aclose()
    await flush_all(lengine, ledger)
    await assert_books_balance(lengine, ledger, accounts)
