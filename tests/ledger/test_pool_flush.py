"""Pools in the flush (docs/pools.md): a pool's spend keeps the member it paid for in
``member_id``; a member's account events set its limit and own-credits-first; an entry whose
``pm`` names no member of its account is booked without it and quarantined, and the rest of
its batch lands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
from tests.ledger.pool_entries import PoolOutbox
from tests.ledger.support import ledger_rows

from quotagate.engine import CreditEngine
from quotagate.errors import OutboxEntryInvalid
from quotagate.ledger import Ledger, flush_all
from quotagate.ledger.batch import COPY_COLUMNS, build_batch
from quotagate.ledger.outbox import RawEntry, StreamReader

Acct = Callable[[str], str]


async def settings(ledger: Ledger, account_id: str) -> tuple[Any, ...] | None:
    async with ledger.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT member_limit, own_credits_first FROM user_credits WHERE account_id = $1",
            account_id,
        )
    return None if row is None else tuple(row)


async def quarantined(ledger: Ledger, account_id: str) -> list[Any]:
    async with ledger.pool.acquire() as conn:
        return list(
            await conn.fetch(
                "SELECT transaction_id, error FROM ledger_quarantine WHERE account_id = $1",
                account_id,
            )
        )


async def raw_outbox(engine: CreditEngine, account_id: str) -> list[RawEntry]:
    partition = engine.keys.partition_of(account_id)
    return await StreamReader(engine).read(partition, 100)


async def test_the_fast_path_copies_the_member_of_a_pools_spend(
    lengine: CreditEngine, acct: Acct
) -> None:
    pool = acct("pool")
    out = PoolOutbox(lengine)
    paid = await out.spend(pool, 4, member=f"{pool}~alice")
    own = await out.spend(pool, 2)
    batch = build_batch(await raw_outbox(lengine, pool))
    assert batch.readable and batch.transactions == 2
    column = COPY_COLUMNS.index("member_id")
    lines = {line.split(b"\x1f")[0].decode(): line.split(b"\x1f") for line in batch.lines}
    assert lines[paid][column] == f"{pool}~alice".encode()
    assert lines[own][column] == b""
    assert batch.effects[pool.encode()].credits == -6  # the pool paid both


@pytest.mark.parametrize(
    "member",
    ["other~alice", "{pool}", "{pool}~", "{pool}~al~ice", "{pool}~al ice", "{pool}~alice."],
)
async def test_a_pm_that_names_no_member_of_the_pool_does_not_parse(
    lengine: CreditEngine, acct: Acct, member: str
) -> None:
    pool = acct("pool")
    await PoolOutbox(lengine).spend(pool, 4, member=member.format(pool=pool))
    with pytest.raises(OutboxEntryInvalid, match="pm"):
        build_batch(await raw_outbox(lengine, pool))


async def test_pool_spends_keep_their_member_and_member_events_set_its_settings(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    pool = acct("pool")
    alice, bob = f"{pool}~alice", f"{pool}~bob"
    out = PoolOutbox(lengine)
    await out.event(pool)
    await out.event(alice, pl="50", pf="1")
    await out.event(bob)
    for_alice = [await out.spend(pool, 3, member=alice) for _ in range(3)]
    for_bob = await out.spend(pool, 7, member=bob)
    pools_own = await out.spend(pool, 1)
    alices_own = await out.spend(alice, 2)
    await flush_all(lengine, ledger)

    rows = {r["id"]: r for r in await ledger_rows(ledger, [pool, alice])}
    assert {i: rows[i]["member_id"] for i in rows} == {
        **dict.fromkeys(for_alice, alice), for_bob: bob, pools_own: None, alices_own: None,
    }  # fmt: skip
    assert rows[for_bob]["account_id"] == pool and rows[alices_own]["account_id"] == alice
    assert await settings(ledger, alice) == (50, True)
    assert await settings(ledger, bob) == (None, False)
    assert await settings(ledger, pool) == (None, False)
    async with ledger.pool.acquire() as conn:
        credits = await conn.fetchval(
            "SELECT credits FROM user_credits WHERE account_id = $1", pool
        )
    assert credits == -(3 * 3 + 7 + 1)

    # A later event without pl takes the limit away; one with pf=0 puts the pool first.
    await out.event(alice, pf="0")
    await out.event(bob, pl="0")
    await flush_all(lengine, ledger)
    assert await settings(ledger, alice) == (None, False)
    assert await settings(ledger, bob) == (0, False)
    assert await quarantined(ledger, pool) == [] and await quarantined(ledger, alice) == []


@pytest.mark.parametrize(
    ("kind", "member"),
    [
        ("spend", "other~alice"),
        ("spend", "{pool}~al~ice"),
        ("spend", "{pool}~al\x00ice"),
        ("spend", "{pool}"),
        ("refund", "{pool}~alice"),
    ],
    ids=["another pool", "two ~", "a NUL", "no name", "on a refund"],
)
async def test_an_entry_whose_pm_is_wrong_is_booked_without_it_and_quarantined(
    lengine: CreditEngine, ledger: Ledger, acct: Acct, kind: str, member: str
) -> None:
    """The pool's balance counted the spend, so the money is booked; the member it names
    cannot be, and the raw entry waits in ledger_quarantine. The other entries land."""
    pool = acct("pool")
    alice = f"{pool}~alice"
    out = PoolOutbox(lengine)
    before = await out.spend(pool, 3, member=alice)
    amount = -5 if kind == "spend" else 5
    wrong, _ = await out.transaction(
        pool, kind, amount, res="api_call", u="1", pm=member.format(pool=pool)
    )
    after = await out.spend(pool, 2, member=alice)
    results = await flush_all(lengine, ledger)

    assert sum(r.quarantined for r in results) == 1
    rows = {r["id"]: r for r in await ledger_rows(ledger, [pool])}
    assert {i: (r["amount"], r["member_id"]) for i, r in rows.items()} == {
        before: (-3, alice), wrong: (amount, None), after: (-2, alice),
    }  # fmt: skip
    [(transaction_id, error)] = await quarantined(ledger, pool)
    assert transaction_id == wrong and error.startswith("pm dropped")
    assert await lengine.redis.xlen(lengine.keys.outbox(lengine.keys.partition_of(pool))) == 0


@pytest.mark.parametrize(
    ("whose", "extra"),
    [("pool", {"pl": "10"}), ("member", {"pl": "-1"}), ("member", {"pl": "x"}),
     ("member", {"pf": "2"}), ("pool", {"pf": "1"})],
    ids=["pl on a pool", "a negative limit", "a limit that is no number", "pf of 2",
         "pf on a pool"],
)  # fmt: skip
async def test_an_account_event_whose_member_fields_are_wrong_is_quarantined_unapplied(
    lengine: CreditEngine, ledger: Ledger, acct: Acct, whose: str, extra: dict[str, str]
) -> None:
    pool = acct("pool")
    account = pool if whose == "pool" else f"{pool}~alice"
    out = PoolOutbox(lengine)
    event = await out.event(account, **extra)
    spent = await out.spend(account, 1)
    results = await flush_all(lengine, ledger)

    assert sum(r.quarantined for r in results) == 1
    async with ledger.pool.acquire() as conn:
        [(transaction_id, error)] = await conn.fetch(
            "SELECT transaction_id, error FROM ledger_quarantine"
            " WHERE partition = $1 AND stream_id = $2",
            lengine.keys.partition_of(account), event,
        )  # fmt: skip
    assert transaction_id is None and error.startswith("not booked:")
    assert [r["id"] for r in await ledger_rows(ledger, [account])] == [spent]
    assert await settings(ledger, account) == (None, False)  # the spend's placeholder row


async def test_text_postgres_refuses_is_dropped_and_the_member_kept(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    pool = acct("pool")
    alice = f"{pool}~alice"
    out = PoolOutbox(lengine)
    txn_id, _ = await out.transaction(
        pool, "spend", -4, res="api_call", u="1", d="a\x00b", md='{"k": "\\u0000"}', pm=alice
    )
    await flush_all(lengine, ledger)
    [row] = await ledger_rows(ledger, [pool])
    assert (row["id"], row["member_id"], row["description"], row["metadata"]) == (
        txn_id, alice, None, None,
    )  # fmt: skip
    [(_, error)] = await quarantined(ledger, pool)
    assert "d dropped" in error and "pm" not in cast(str, error)
