"""An upgrade with a non-empty outbox loses nothing: entries the previous scripts wrote (every
field, empty or not, the time in ``ts``) flush beside today's compact ones, each once, with
what it carried, and the books balance."""

from __future__ import annotations

from collections.abc import Callable

from tests.ledger.support import assert_books_balance, ledger_rows

from quotagate import ids
from quotagate.engine import CreditEngine
from quotagate.ledger import Ledger, flush_all
from quotagate.ledger.outbox import TransactionEntry, read_all

Acct = Callable[[str], str]

BEFORE_MS = 1_700_000_000_000
"""The time the entries of the earlier version carry in ``ts``: far from their stream ids'."""


def _earlier_transaction(
    txn: str, account: str, amount: int, kind: str, balance: int, **fields: str
) -> dict[str, str]:
    """A transaction as the previous scripts appended it: every field, in their order."""
    entry = {
        "id": txn, "a": account, "amt": str(amount), "t": kind, "res": "", "u": "0", "d": "",
        "md": "", "ts": str(BEFORE_MS), "bal": str(balance), "dm": "0", "ik": "",
    }  # fmt: skip
    entry.update(fields)
    return entry


async def test_entries_of_the_previous_version_flush_beside_todays(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("upgrade")
    await lengine.upsert_account(a)
    await flush_all(lengine, ledger)
    start = (await lengine.get_account(a)).balance
    spend, grant, refund, event = ids.new_id(), ids.new_id(), ids.new_id(), ids.new_id()
    earlier = [
        _earlier_transaction(
            spend, a, -4, "spend", start - 4, res="api_call", u="4", dm="-4", ik="req-1"
        ),
        _earlier_transaction(grant, a, 10, "grant", start + 6, d="top-up", md='{"n": 1}'),
        _earlier_transaction(refund, a, 2, "refund", start + 8, rf=spend),
        {"id": event, "a": a, "t": "account", "tier": "pro", "st": "active", "od": "3",
         "rst": str(BEFORE_MS), "ca": str(BEFORE_MS - 1000), "ts": str(BEFORE_MS)},
    ]  # fmt: skip
    # Redis as the previous scripts left it: the balance after those entries.
    account_key = lengine.keys.account(a).account
    await lengine.redis.hincrby(account_key, "m", -4)
    await lengine.redis.hincrby(account_key, "b", 12)
    await lengine.redis.hset(account_key, mapping={"tier": "pro", "od": "3"})
    outbox = lengine.keys.outbox(lengine.keys.partition_of(a))
    for fields in earlier:
        await lengine.redis.xadd(outbox, fields)  # type: ignore[arg-type]
    today = await lengine.consume(a, "api_call", 1)

    entries = {e.id: e for e in await read_all(lengine, lengine.keys.partition_of(a))}
    assert len(entries) == 5
    new_entry = entries[today.transaction_id]
    assert isinstance(new_entry, TransactionEntry)
    assert new_entry.created_ms == int(new_entry.stream_id.split("-")[0])
    assert entries[spend].created_ms == BEFORE_MS

    await flush_all(lengine, ledger)
    assert await lengine.redis.xlen(outbox) == 0
    rows = {r["id"]: r for r in await ledger_rows(ledger, [a])}
    assert {spend, grant, refund, today.transaction_id} <= set(rows)
    got = {
        txn: (rows[txn]["amount"], rows[txn]["type"], rows[txn]["resource"], rows[txn]["units"],
              rows[txn]["description"], rows[txn]["metadata"], rows[txn]["idempotency_key"],
              rows[txn]["refund_of"], int(rows[txn]["created_at"].timestamp() * 1000))
        for txn in (spend, grant, refund)
    }  # fmt: skip
    assert got == {
        spend: (-4, "spend", "api_call", 4, None, None, "req-1", None, BEFORE_MS),
        grant: (10, "grant", None, None, "top-up", '{"n": 1}', None, None, BEFORE_MS),
        refund: (2, "refund", None, None, None, None, None, spend, BEFORE_MS),
    }
    assert rows[today.transaction_id]["amount"] == -1
    snapshot = (await ledger.snapshots([a]))[a]
    assert (snapshot.tier, snapshot.overdraft_limit) == ("pro", 3)
    await assert_books_balance(lengine, ledger, [a])
