"""Entries PostgreSQL refuses, or that do not parse, never stop a partition: their money is
booked without the text (when the money fields are sound), the raw entry goes to
ledger_quarantine with the error, and the flush goes on."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY
from redis.typing import EncodableT, FieldT
from tests.ledger.support import assert_books_balance, ledger_rows
from tests.ledger.test_flush_errors import flush_errors

from quotagate import ids
from quotagate.engine import CreditEngine
from quotagate.engine.replies import unwrap
from quotagate.ledger import Ledger, flush_partition
from quotagate.ledger.outbox import RawEntries, StreamReader
from quotagate.ledger.quarantine import decode_raw_entry, screen

Acct = Callable[[str], str]


async def charge_as_an_older_gateway(
    engine: CreditEngine, account_id: str, description: bytes, metadata: bytes
) -> str:
    """A spend of 3 made by the consume script itself, without the gateway's checks on the
    text (as a gateway from before them did): Redis charges it and the outbox carries it."""
    txn_id = ids.new_id()
    args: list[str | bytes] = [
        txn_id, account_id, "3", "api_call", "3", description, metadata, "", "", "86400000",
    ]  # fmt: skip
    keys = engine.keys.script_keys(account_id, None)
    unwrap(await engine.runner.run(engine.scripts["consume"], keys, args))  # type: ignore[arg-type]
    return txn_id


def quarantined_count(booked: str) -> float:
    value = REGISTRY.get_sample_value("quotagate_ledger_quarantined_total", {"booked": booked})
    return value or 0.0


async def quarantine_rows(ledger: Ledger, stream_ids: list[str], partition: int) -> list[Any]:
    async with ledger.pool.acquire() as conn:
        return list(
            await conn.fetch(
                "SELECT * FROM ledger_quarantine WHERE partition = $1 AND stream_id = ANY($2)",
                partition,
                stream_ids,
            )
        )


UNSTORABLE = [
    ("NUL in description", b"top-up\x00", b""),
    ("NUL in metadata", b"plain", b'{"order": "o-\\u0000"}'),
    ("NUL in both", b"\x00", b'{"k\\u0000": 1}'),
    ("description not UTF-8", b"\xff\xfe", b""),
    ("metadata not JSON", b"plain", b"{not json"),
    ("metadata a lone surrogate", b"plain", b'{"k": "\\ud800"}'),
]


@pytest.mark.parametrize(
    ("name", "description", "metadata"), UNSTORABLE, ids=[c[0] for c in UNSTORABLE]
)
async def test_an_entry_postgres_refuses_is_booked_quarantined_and_the_flush_goes_on(
    lengine: CreditEngine,
    ledger: Ledger,
    acct: Acct,
    name: str,
    description: bytes,
    metadata: bytes,
) -> None:
    a = acct("nul")
    await lengine.upsert_account(a)
    partition = lengine.keys.partition_of(a)
    stream = lengine.keys.outbox(partition)
    before = await lengine.consume(a, "api_call", 2, description="before", metadata={"n": 1})
    bad = await charge_as_an_older_gateway(lengine, a, description, metadata)
    bad_raw = (await StreamReader(lengine).read(partition, 100))[-1]  # bytes, as sent
    bad_stream_id = bad_raw[0].decode()
    after = await lengine.consume(a, "api_call", 4, description="after")
    counted = quarantined_count("true")
    errors = flush_errors("quarantined")
    if name != "description not UTF-8":  # reconciliation reads pending entries as text
        await assert_books_balance(lengine, ledger, [a])  # pending: its effect counted

    result = await flush_partition(lengine, ledger, partition)

    assert (result.inserted, result.quarantined, result.deleted) == (4, 1, 5)
    assert await lengine.redis.xlen(stream) == 0
    rows = {r["id"]: r for r in await ledger_rows(ledger, [a])}
    assert set(rows) >= {before.transaction_id, bad, after.transaction_id}
    assert len(rows) == 4  # with the opening grant
    assert rows[bad]["amount"] == -3
    assert (rows[bad]["resource"], rows[bad]["units"]) == ("api_call", 3)
    dropped = {"description": description, "metadata": metadata}
    for column, value in dropped.items():
        stored = rows[bad][column]
        assert stored is None or stored.encode() == value == b"plain"
    assert rows[before.transaction_id]["description"] == "before"
    assert json.loads(rows[before.transaction_id]["metadata"]) == {"n": 1}
    await assert_books_balance(lengine, ledger, [a])

    [row] = await quarantine_rows(ledger, [bad_stream_id], partition)
    assert (row["transaction_id"], row["account_id"]) == (bad, a)
    raw = decode_raw_entry(bytes(row["raw_entry"]))
    assert raw == bad_raw
    fields = dict(zip(raw[1][0::2], raw[1][1::2], strict=True))
    assert (fields.get(b"d", b""), fields.get(b"md", b"")) == (description, metadata)
    assert "dropped" in row["error"] and not row["error"].startswith("not booked")
    assert quarantined_count("true") == counted + 1
    assert flush_errors("quarantined") == errors + 1


async def test_a_re_run_of_a_committed_batch_quarantines_nothing_twice(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    """A worker that died after the commit and before the trim: the next flush reads the
    batch again; the rows and the quarantine entry are there already, nothing changes."""
    a = acct("rerun")
    await lengine.upsert_account(a)
    partition = lengine.keys.partition_of(a)
    stream = lengine.keys.outbox(partition)
    await charge_as_an_older_gateway(lengine, a, b"\x00", b"")
    kept = cast(RawEntries, await lengine.redis.xrange(stream))
    await flush_partition(lengine, ledger, partition)
    for _, fields in kept:  # the same entries, as if never trimmed (new stream ids)
        await lengine.redis.xadd(stream, fields)  # type: ignore[arg-type]  # redis-py wants an invariant Dict of its own unions
    counted = quarantined_count("true")
    again = await flush_partition(lengine, ledger, partition)
    assert (again.inserted, again.duplicates) == (0, 2)
    assert again.quarantined == 1  # the copy has a stream id of its own
    assert quarantined_count("true") == counted + 1
    assert len(await ledger_rows(ledger, [a])) == 2
    await assert_books_balance(lengine, ledger, [a])


MALFORMED = [
    ("amount missing", {"amt": None}),
    ("amount not a number", {"amt": b"lots"}),
    ("balance not a number", {"bal": b"lots"}),
    ("unknown type", {"t": b"steal"}),
    ("id empty", {"id": b""}),
    ("account not UTF-8", {"a": b"\xff"}),
    ("time not a number", {"ts": b"soon"}),
]


@pytest.mark.parametrize(("name", "change"), MALFORMED, ids=[c[0] for c in MALFORMED])
async def test_an_entry_that_does_not_parse_is_quarantined_unbooked_and_the_flush_goes_on(
    lengine: CreditEngine, ledger: Ledger, acct: Acct, name: str, change: dict[str, bytes | None]
) -> None:
    """Written by hand (Redis charged nothing for it): nothing can be booked of it."""
    a = acct("malformed")
    await lengine.upsert_account(a)
    partition = lengine.keys.partition_of(a)
    stream = lengine.keys.outbox(partition)
    await lengine.consume(a, "api_call", 2)
    [(_, fields)] = cast(RawEntries, await lengine.redis.xrevrange(stream, count=1))
    bad: dict[FieldT, EncodableT] = {**dict(fields.items()), "id": ids.new_id()}
    for field, value in change.items():
        if value is None:
            del bad[field]
        else:
            bad[field] = value
    bad_stream_id = await lengine.redis.xadd(stream, bad)
    assert isinstance(bad_stream_id, str)
    after = await lengine.consume(a, "api_call", 5)
    counted = quarantined_count("false")

    result = await flush_partition(lengine, ledger, partition)

    assert (result.inserted, result.quarantined, result.deleted) == (3, 1, 5)
    assert await lengine.redis.xlen(stream) == 0
    rows = await ledger_rows(ledger, [a])
    assert after.transaction_id in {r["id"] for r in rows} and len(rows) == 3
    await assert_books_balance(lengine, ledger, [a])
    [row] = await quarantine_rows(ledger, [bad_stream_id], partition)
    assert row["transaction_id"] is None and row["error"].startswith("not booked")
    assert quarantined_count("false") == counted + 1


def test_units_that_are_not_a_number_are_dropped_and_the_money_kept() -> None:
    fields = [b"id", b"t1", b"a", b"acct", b"amt", b"-3", b"t", b"spend", b"res", b"api_call",
              b"u", b"three", b"d", b"", b"md", b"", b"ts", b"1700000000000", b"bal", b"7",
              b"dm", b"0", b"ik", b""]  # fmt: skip
    entry, problem = screen([b"1-0", fields])
    assert entry is not None and problem is not None
    assert (entry.amount, entry.resource, entry.units) == (-3, None, None)  # type: ignore[union-attr]
    assert problem.startswith("res, u dropped: outbox entry 1-0 cannot be read")


async def test_a_written_through_grant_with_a_nul_is_not_durable_then_flushed(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    """The write-through refuses it (the answer says durable: false, nothing in the ledger);
    the flush books it without its text, once."""
    a = acct("wt-nul")
    await lengine.upsert_account(a)
    # credit.lua's ARGV as the engine builds it (no refund: spend id and counts empty).
    args = [
        ids.new_id(), a, "25", "grant", "gift\x00", "", "", "", "86400000", str(10**15),
        "", "", "", "604800000",
    ]  # fmt: skip
    keys = (*lengine.keys.script_keys(a, None), lengine.keys.refund_count(a, ""))
    reply = unwrap(await lengine.runner.run(lengine.scripts["credit"], keys, args))
    txn_id, entry_id = reply[0], reply[4]
    assert not await ledger.write_through(lengine, a, [entry_id])
    assert await ledger.present_ids([txn_id]) == set()
    result = await flush_partition(lengine, ledger, lengine.keys.partition_of(a))
    assert (result.inserted, result.quarantined) == (2, 1)
    assert await ledger.write_through(lengine, a, [entry_id])  # gone from the outbox: done
    rows = {r["id"]: r for r in await ledger_rows(ledger, [a])}
    assert (rows[txn_id]["amount"], rows[txn_id]["description"]) == (25, None)
    await assert_books_balance(lengine, ledger, [a])
