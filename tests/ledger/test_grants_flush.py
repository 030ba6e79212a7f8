"""Explicit grants reach the ledger: the flush creates each grant's row from its ``grant``
transaction and lowers what is left of it by the draws, expiry and void of later ones, once
however often a batch is applied; a grant entry PostgreSQL cannot book is quarantined while
the rest of its batch lands. The entries are written into the outbox directly, in the format
docs/grants.md gives the scripts."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from redis.typing import EncodableT, FieldT
from tests.ledger.support import ledger_rows

from quotagate import ids
from quotagate.engine import CreditEngine
from quotagate.ledger import Ledger, flush_partition
from quotagate.ledger.outbox import RawEntries

Acct = Callable[[str], str]

EXPIRES_MS = 1_900_000_000_000


class Outbox:
    """Writes transaction entries of one account into its partition's outbox, as the scripts
    write them (empty fields left out)."""

    def __init__(self, engine: CreditEngine, account_id: str) -> None:
        self.engine, self.account_id = engine, account_id
        self.partition = engine.keys.partition_of(account_id)
        self.stream = engine.keys.outbox(self.partition)
        self.balance = 0

    async def add(self, kind: str, amount: int, **grant_fields: str) -> tuple[str, str]:
        """Append one transaction; its id and stream id."""
        self.balance += amount
        txn_id = ids.new_id()
        fields: dict[FieldT, EncodableT] = {
            "id": txn_id, "a": self.account_id, "amt": str(amount), "t": kind,
            "bal": str(self.balance),
        }  # fmt: skip
        fields.update(grant_fields)
        stream_id = await self.engine.redis.xadd(self.stream, fields)
        return txn_id, str(stream_id)

    async def grant(self, amount: int, *, priority: int = 50, source: str = "promotion",
                    expires_ms: int | None = None) -> tuple[str, str]:  # fmt: skip
        """A grant transaction creating an explicit grant: the grant id and the row's id."""
        grant_id = ids.new_id()
        extra = {"gr": grant_id, "gp": str(priority), "gs": source}
        if expires_ms is not None:
            extra["gx"] = str(expires_ms)
        txn_id, _ = await self.add("grant", amount, **extra)
        return grant_id, txn_id

    async def spend(self, amount: int, draws: dict[str, int]) -> str:
        gd = ",".join(f"{g}:{c}" for g, c in draws.items())
        txn_id, _ = await self.add("spend", -amount, **({"gd": gd} if gd else {}))
        return txn_id


async def grant_rows(ledger: Ledger, account_id: str) -> dict[str, Any]:
    async with ledger.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM credit_grants WHERE account_id = $1", account_id)
    return {r["id"]: r for r in rows}


async def snapshot_credits(ledger: Ledger, account_id: str) -> int:
    return int((await snapshot(ledger, account_id))["credits"])


async def snapshot(ledger: Ledger, account_id: str) -> Any:
    async with ledger.pool.acquire() as conn:
        return await conn.fetchrow("SELECT * FROM user_credits WHERE account_id = $1", account_id)


@pytest.mark.parametrize("batch_size", [500, 1], ids=["one batch", "a batch per entry"])
async def test_grants_are_created_drawn_on_expired_and_voided(
    lengine: CreditEngine, ledger: Ledger, acct: Acct, batch_size: int
) -> None:
    a = acct("grants")
    out = Outbox(lengine, a)
    promo, promo_txn = await out.grant(100, priority=10, expires_ms=EXPIRES_MS)
    pack, _ = await out.grant(50, source="purchase")
    trial, _ = await out.grant(30, source="adjustment", priority=0)
    first = await out.spend(30, {trial: 20, promo: 10})
    await out.spend(25, {trial: 10, promo: 5})  # the trial is used up
    expiry, _ = await out.add("expire", -85, gr=promo)
    void, _ = await out.add("adjust", -50, gr=pack)

    result = await flush_partition(lengine, ledger, out.partition, batch_size=batch_size)

    assert (result.inserted, result.quarantined) == (7, 0)
    grants = await grant_rows(ledger, a)
    assert set(grants) == {promo, pack, trial}
    row = grants[promo]
    assert (row["amount"], row["remaining"], row["source"], row["priority"]) == (
        100, 0, "promotion", 10,
    )  # fmt: skip
    assert row["expires_at"] == datetime.fromtimestamp(EXPIRES_MS / 1000, UTC)
    assert (row["end_reason"], row["transaction_id"]) == ("expired", promo_txn)
    assert (grants[pack]["remaining"], grants[pack]["end_reason"]) == (0, "voided")
    assert grants[pack]["expires_at"] is None
    assert (grants[trial]["remaining"], grants[trial]["end_reason"]) == (0, "spent")
    assert all(g["ended_at"] is not None for g in grants.values())
    rows = {r["id"]: r for r in await ledger_rows(ledger, [a])}
    assert json.loads(rows[first]["grant_draws"]) == {trial: 20, promo: 10}
    assert (rows[expiry]["grant_id"], rows[void]["grant_id"]) == (promo, pack)
    assert rows[promo_txn]["grant_id"] == promo and rows[promo_txn]["grant_draws"] is None
    assert await snapshot_credits(ledger, a) == out.balance == -10  # 10 from standing grants
    assert (await snapshot(ledger, a))["last_reset_at"] is None  # a grant's expiry is no reset


async def test_a_grant_partly_drawn_stays_live(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("partly")
    out = Outbox(lengine, a)
    promo, _ = await out.grant(100)
    await out.spend(40, {promo: 40})
    await out.spend(7, {})  # from the standing grants only: no draws recorded
    await flush_partition(lengine, ledger, out.partition)
    row = (await grant_rows(ledger, a))[promo]
    assert (row["remaining"], row["ended_at"], row["end_reason"]) == (60, None, None)
    spends = [r for r in await ledger_rows(ledger, [a]) if r["type"] == "spend"]
    assert sorted(r["grant_draws"] is None for r in spends) == [False, True]


async def test_a_batch_flushed_again_changes_each_grant_once(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    """A worker that died after the commit and before the trim: the next flush reads the same
    entries again (here with new stream ids); the rows are in the ledger, nothing is taken
    from a grant twice. The plain spend is not looked up first: its COPY meets its row and
    the batch goes the checked way, where ON CONFLICT skips every row."""
    a = acct("rerun")
    out = Outbox(lengine, a)
    promo, _ = await out.grant(100)
    await out.spend(30, {promo: 30})
    await out.spend(3, {})
    await out.add("expire", -70, gr=promo)
    kept = cast(RawEntries, await lengine.redis.xrange(out.stream))
    await flush_partition(lengine, ledger, out.partition)
    before = (await grant_rows(ledger, a))[promo]
    for _, fields in kept:
        await lengine.redis.xadd(out.stream, fields)  # type: ignore[arg-type]  # redis-py wants an invariant Dict of its own unions

    again = await flush_partition(lengine, ledger, out.partition)

    assert (again.inserted, again.duplicates, again.quarantined) == (0, 4, 0)
    assert (await grant_rows(ledger, a))[promo] == before
    assert (before["remaining"], before["end_reason"]) == (0, "expired")
    assert await snapshot_credits(ledger, a) == -3


async def test_a_grant_and_its_void_written_through_then_flushed_count_once(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    """The write-through books the grant and the void; the flush finds both in the ledger,
    leaves them out, and books the spend between them."""
    a = acct("through")
    out = Outbox(lengine, a)
    grant_id = ids.new_id()
    _, granted = await out.add("grant", 80, gr=grant_id, gp="20", gs="refund")
    assert await ledger.write_through(lengine, a, [granted])
    row = (await grant_rows(ledger, a))[grant_id]
    assert (row["amount"], row["remaining"], row["source"]) == (80, 80, "refund")
    await out.spend(5, {grant_id: 5})
    _, voided = await out.add("adjust", -75, gr=grant_id)
    assert await ledger.write_through(lengine, a, [voided])
    result = await flush_partition(lengine, ledger, out.partition)
    assert (result.inserted, result.duplicates) == (1, 2)
    row = (await grant_rows(ledger, a))[grant_id]
    assert (row["remaining"], row["end_reason"]) == (0, "voided")
    assert await snapshot_credits(ledger, a) == 0


BAD_ENTRIES = [
    ("credits not a number", "spend", -5, {"gd": "{grant}:five"}),
    ("credits past bigint", "spend", -5, {"gd": "{grant}:9223372036854775808"}),
    ("draws past the spend", "spend", -5, {"gd": "{grant}:6"}),
    ("no grant id", "spend", -5, {"gd": ":5"}),
    ("a NUL in the grant id", "spend", -5, {"gd": "{grant}\x00:5"}),
    ("a draw on a grant", "grant", 5, {"gd": "{grant}:5"}),
    ("an unknown source", "grant", 5, {"gr": "{new}", "gp": "50", "gs": "gift"}),
    ("a priority past 100", "grant", 5, {"gr": "{new}", "gp": "101", "gs": "promotion"}),
    ("no priority", "grant", 5, {"gr": "{new}", "gs": "promotion"}),
    ("a NUL in a new grant's id", "grant", 5, {"gr": "{new}\x00", "gp": "1", "gs": "promotion"}),
    ("an expiry of a positive amount", "expire", 5, {"gr": "{grant}"}),
    ("a grant id on a spend", "spend", -5, {"gr": "{grant}"}),
]


@pytest.mark.parametrize(
    ("name", "kind", "amount", "fields"), BAD_ENTRIES, ids=[c[0] for c in BAD_ENTRIES]
)
async def test_a_grant_entry_the_ledger_cannot_book_is_quarantined_and_the_rest_lands(
    lengine: CreditEngine,
    ledger: Ledger,
    acct: Acct,
    name: str,
    kind: str,
    amount: int,
    fields: dict[str, str],
) -> None:
    a = acct("badgrant")
    out = Outbox(lengine, a)
    promo, _ = await out.grant(100)
    new = ids.new_id()
    bad = {k: v.format(grant=promo, new=new) for k, v in fields.items()}
    bad_txn, bad_stream_id = await out.add(kind, amount, **bad)
    after = await out.spend(8, {promo: 8})

    result = await flush_partition(lengine, ledger, out.partition)

    assert (result.inserted, result.quarantined, result.deleted) == (2, 1, 3)
    assert await lengine.redis.xlen(out.stream) == 0
    rows = {r["id"] for r in await ledger_rows(ledger, [a])}
    assert after in rows and bad_txn not in rows
    grants = await grant_rows(ledger, a)
    assert set(grants) == {promo} and grants[promo]["remaining"] == 92
    async with ledger.pool.acquire() as conn:
        error = await conn.fetchval(
            "SELECT error FROM ledger_quarantine WHERE partition = $1 AND stream_id = $2",
            out.partition,
            bad_stream_id,
        )
    assert error is not None and error.startswith("not booked")


async def test_entries_in_the_current_format_flush_as_before(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    """What the engine writes without explicit grants: no grant columns, no grant rows."""
    a = acct("plain")
    await lengine.upsert_account(a)
    spent = await lengine.consume(a, "api_call", 3)
    credit = await lengine.credit(a, 9)
    result = await flush_partition(lengine, ledger, lengine.keys.partition_of(a))
    assert (result.inserted, result.quarantined) == (3, 0)  # with the opening grant
    rows = {r["id"]: r for r in await ledger_rows(ledger, [a])}
    assert {spent.transaction_id, credit.transaction_id} <= set(rows)
    assert all(r["grant_id"] is None and r["grant_draws"] is None for r in rows.values())
    assert await grant_rows(ledger, a) == {}
    account = await lengine.get_account(a)
    assert await snapshot_credits(ledger, a) == account.balance


async def test_a_large_batch_on_the_checked_path_takes_every_draw_once(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    """Past COPY_MIN_ROWS the checked path stages the batch by COPY; a bad entry sends it
    there."""
    a = acct("large")
    out = Outbox(lengine, a)
    promo, _ = await out.grant(1000)
    for _ in range(150):
        await out.spend(2, {promo: 2})
    await out.add("spend", -1, gd=f"{promo}:x")
    result = await flush_partition(lengine, ledger, out.partition)
    assert (result.inserted, result.quarantined) == (151, 1)
    assert (await grant_rows(ledger, a))[promo]["remaining"] == 700
