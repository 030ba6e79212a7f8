"""A flush batch built from raw stream entries: COPY lines, snapshot effects, what is looked
up first, and a clear stop on anything malformed (no I/O here)."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from quotagate.errors import OutboxEntryInvalid
from quotagate.ledger.batch import COPY_COLUMNS, build_batch

TS = 1_700_000_000_123


def _txn(n: int, *, account: str = "alice", kind: str = "spend", **fields: str) -> list[Any]:
    """A raw entry as earlier versions of the scripts wrote it (bytes, every field, empty or
    not, and the time in ``ts``): what an outbox may still hold after an upgrade."""
    values = {
        "id": f"01900000-0000-7000-8000-{n:012d}", "a": account, "amt": "-3", "t": kind,
        "res": "api_call", "u": "3", "d": "", "md": "", "ts": str(TS + n), "bal": "97",
        "dm": "-2", "ik": "",
    }  # fmt: skip
    values.update(fields)
    flat = [part.encode() for item in values.items() for part in item]
    return [f"{TS + n}-0".encode(), flat]


def _compact(entry: list[Any]) -> list[Any]:
    """The same entry as the scripts write it now: no empty field, no ``dm`` of 0, no
    ``u`` without ``res``, the time in the stream id only."""
    fields = dict(zip(entry[1][0::2], entry[1][1::2], strict=True))
    kept = {k: v for k, v in fields.items() if v and k != b"ts" and not (k == b"dm" and v == b"0")}
    if b"res" not in kept:
        kept.pop(b"u", None)
    return [entry[0], [part for item in kept.items() for part in item]]


def _event(n: int, account: str, tier: str) -> list[Any]:
    values = {
        "id": f"01900000-0000-7000-9000-{n:012d}", "a": account, "t": "account", "tier": tier,
        "st": "active", "od": "0", "rst": "", "ca": str(TS), "ts": str(TS + n),
    }  # fmt: skip
    return [f"{TS + n}-0".encode(), [part.encode() for item in values.items() for part in item]]


def _rows(data: bytes) -> list[dict[str, str]]:
    """COPY data read back the way PostgreSQL reads it (CSV, US separator, SOH quote)."""
    reader = csv.reader(io.StringIO(data.decode()), delimiter="\x1f", quotechar="\x01")
    return [dict(zip(COPY_COLUMNS, row, strict=True)) for row in reader]


def test_spends_become_copy_lines_and_effects_per_account() -> None:
    raw = [_txn(1), _txn(2, account="bob", amt="-5", dm="0"), _txn(3)]
    batch = build_batch(raw)
    data, count = batch.copy_data(set())
    rows = _rows(data)
    assert count == batch.transactions == 3 and len(rows) == 3
    assert rows[0] == {
        "id": "01900000-0000-7000-8000-000000000001", "account_id": "alice", "amount": "-3",
        "type": "spend", "resource": "api_call", "units": "3", "description": "",
        "metadata": "", "created_at": "2023-11-14 22:13:20.124+00:00", "balance_after": "97",
        "idempotency_key": "", "refund_of": "", "grant_id": "", "grant_draws": "",
        "member_id": "",
    }  # fmt: skip
    assert batch.last_stream_id == f"{TS + 3}-0"
    assert not batch.maybe_present and not batch.events
    alice = batch.effects[b"alice"]
    assert (alice.credits, alice.monthly, alice.first_ms, alice.reset_ms) == (-6, -4, TS + 1, None)
    assert alice.last_id == b"01900000-0000-7000-8000-000000000003"
    assert batch.effects[b"bob"].credits == -5


def test_a_grant_without_resource_has_no_units_and_may_be_in_the_ledger_already() -> None:
    raw = [_txn(1), _txn(2, kind="grant", amt="500", res="", u="0", dm="500", d="renewal")]
    batch = build_batch(raw)
    rows = _rows(batch.copy_data(set())[0])
    assert (rows[1]["resource"], rows[1]["units"], rows[1]["description"]) == ("", "", "renewal")
    assert list(batch.maybe_present) == [1]
    txn_id, account, effect = batch.maybe_present[1]
    assert (txn_id, account, effect.credits, effect.reset_ms) == (
        b"01900000-0000-7000-8000-000000000002", b"alice", 500, TS + 2,
    )  # fmt: skip
    assert batch.snapshot_effects(set())[b"alice"].credits == 497
    assert batch.snapshot_effects({1})[b"alice"].credits == -3  # found in the ledger: left out
    data, count = batch.copy_data({1})
    assert count == 1 and [r["id"][-1] for r in _rows(data)] == ["1"]


def test_a_capture_names_its_hold_and_is_a_spend_like_any_other() -> None:
    entry = _txn(1)
    entry[1] += [b"hold", b"h-1"]
    batch = build_batch([entry])
    assert batch.transactions == 1 and not batch.maybe_present


def test_the_same_transaction_twice_in_a_batch_counts_once() -> None:
    batch = build_batch([_txn(1), _txn(2), _txn(1)])
    assert batch.transactions == 2
    assert batch.effects[b"alice"].credits == -6


def test_values_copy_would_misread_are_quoted() -> None:
    nasty = 'a\tb\nc\rd\x1fe\x01f\\g"h'
    meta = '{"path": "C:\\\\x", "q": "\\"", "e": "\\u00e9"}'
    batch = build_batch([_txn(1, d=nasty, md=meta, ik="k\x01"), _txn(2, d="plain")])
    rows = _rows(batch.copy_data(set())[0])
    assert (rows[0]["description"], rows[0]["metadata"], rows[0]["idempotency_key"]) == (
        nasty, meta, "k\x01",
    )  # fmt: skip
    assert rows[1]["description"] == "plain"


def test_backslashes_and_quotes_alone_need_no_quoting() -> None:
    meta = '{"q": "\\"x\\"", "u": "\\u00e9"}'
    batch = build_batch([_txn(1, md=meta)])
    data = batch.copy_data(set())[0]
    assert b"\x01" not in data and _rows(data)[0]["metadata"] == meta


def test_the_newest_account_event_of_each_account_is_kept() -> None:
    raw = [_event(1, "alice", "free"), _txn(2), _event(3, "alice", "pro"), _event(4, "bob", "x")]
    batch = build_batch(raw)
    assert batch.transactions == 1
    assert {(e.account_id, e.tier) for e in batch.events} == {("alice", "pro"), ("bob", "x")}


def test_an_entry_of_today_and_one_of_an_earlier_version_give_the_same_line() -> None:
    kinds = [
        _txn(1), _txn(2, dm="0"), _txn(3, d="with words", md='{"n": 1}', ik="req-1"),
        _txn(4, kind="grant", amt="5", res="", u="0", dm="0"),
        _txn(5, kind="refund", amt="2", res="", u="0", dm="0", rf="01900000-0000-7000-8000-1"),
        _txn(6, hold="6f1c2a5e-0000-4000-8000-000000000001"),
    ]  # fmt: skip
    for earlier in kinds:
        now = _compact(earlier)
        assert len(now[1]) < len(earlier[1]) and b"ts" not in now[1][0::2]
        old_batch, new_batch = build_batch([earlier]), build_batch([now])
        assert new_batch.copy_data(set()) == old_batch.copy_data(set())
        assert new_batch.effects == old_batch.effects
        assert list(new_batch.maybe_present) == list(old_batch.maybe_present)
        assert new_batch.maybe_present == old_batch.maybe_present


def test_a_transaction_with_its_fields_in_another_order_gets_the_same_line() -> None:
    entry = _txn(1)
    fields = entry[1]
    moved = [entry[0], fields[2:4] + fields[:2] + fields[4:]]  # "a" before "id"
    assert build_batch([moved]).copy_data(set()) == build_batch([entry]).copy_data(set())


def test_a_transaction_with_a_field_the_fast_path_does_not_know_is_parsed() -> None:
    entry = _txn(1)
    entry[1] += [b"new", b"x"]
    batch = build_batch([entry])
    assert batch.transactions == 1 and list(batch.maybe_present) == [0]
    assert _rows(batch.copy_data(set())[0])[0]["account_id"] == "alice"


@pytest.mark.parametrize(
    "change",
    [{"amt": "lots"}, {"t": "steal"}, {"id": ""}, {"a": ""}, {"ts": "soon"}, {"dm": "x"}],
)
def test_an_entry_that_does_not_parse_stops_the_batch(change: dict[str, str]) -> None:
    with pytest.raises(OutboxEntryInvalid):
        build_batch([_txn(1), _txn(2, **change)])
