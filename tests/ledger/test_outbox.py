"""Reading outbox entries: typed records, and a clear stop on anything malformed."""

from __future__ import annotations

import pytest

from quotagate.errors import OutboxEntryInvalid
from quotagate.ledger.outbox import (
    AccountEvent,
    TransactionEntry,
    parse_entry,
    stream_position,
)

SPEND = {
    "id": "01900000-0000-7000-8000-000000000001", "a": "alice", "amt": "-3", "t": "spend",
    "res": "api_call", "u": "3", "d": "", "md": '{"k": 1}', "ts": "1700000000123",
    "bal": "97", "dm": "-3", "ik": "req-1",
}  # fmt: skip
EVENT = {
    "id": "01900000-0000-7000-8000-000000000002", "a": "alice", "t": "account",
    "tier": "pro", "st": "banned", "od": "25", "rst": "", "ca": "1700000000000",
    "ts": "1700000000500",
}  # fmt: skip


def test_a_spend_becomes_a_transaction_entry() -> None:
    entry = parse_entry("1700000000123-0", SPEND)
    assert entry == TransactionEntry(
        stream_id="1700000000123-0", id=SPEND["id"], account_id="alice", amount=-3,
        type="spend", resource="api_call", units=3, description=None, metadata='{"k": 1}',
        idempotency_key="req-1", balance_after=97, created_ms=1700000000123, monthly_delta=-3,
    )  # fmt: skip
    assert not entry.resets_monthly


def test_a_grant_without_resource_has_no_units() -> None:
    fields = {**SPEND, "t": "grant", "amt": "50", "res": "", "u": "0", "dm": "50", "ik": ""}
    entry = parse_entry("1-0", fields)
    assert isinstance(entry, TransactionEntry)
    assert (entry.resource, entry.units, entry.idempotency_key) == (None, None, None)
    assert entry.resets_monthly  # a grant into the monthly bucket is a renewal


def test_an_account_event_becomes_an_account_event() -> None:
    entry = parse_entry("1700000000500-3", EVENT)
    assert entry == AccountEvent(
        stream_id="1700000000500-3", id=EVENT["id"], account_id="alice", tier="pro",
        status="banned", overdraft_limit=25, last_reset_ms=None, created_ms=1700000000000,
    )  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        {"amt": "ten"},
        {"t": "steal"},
        {"id": ""},
        {"ts": ""},
        {"bal": "1.5"},
    ],
)
def test_a_malformed_entry_is_refused_with_its_stream_id(change: dict[str, str]) -> None:
    with pytest.raises(OutboxEntryInvalid, match="outbox entry 5-1 cannot be read"):
        parse_entry("5-1", {**SPEND, **change})


def test_a_missing_field_is_refused() -> None:
    fields = dict(EVENT)
    del fields["tier"]
    with pytest.raises(OutboxEntryInvalid):
        parse_entry("5-1", fields)


def test_stream_positions_sort_like_stream_ids() -> None:
    ids = ["9-10", "10-0", "9-2", "1700000000000-0", "1700000000000-11", "1700000000000-9"]
    expected = sorted(ids, key=lambda i: tuple(int(x) for x in i.split("-")))
    assert sorted(ids, key=stream_position) == expected


GRANT = {"id": "01900000-0000-7000-8000-000000000009", "a": "alice", "amt": "40", "t": "grant",
         "bal": "140", "gr": "g-1", "gx": "1900000000000", "gp": "10", "gs": "promotion"}  # fmt: skip


def test_entries_without_grant_fields_read_as_before() -> None:
    entry = parse_entry("1700000000123-0", SPEND)
    assert isinstance(entry, TransactionEntry)
    assert (entry.grant_id, entry.grant_draws, entry.grant_source) == (None, (), None)
    assert not entry.touches_grants


def test_a_grant_creation_reads_its_grant() -> None:
    entry = parse_entry("1-0", GRANT)
    assert isinstance(entry, TransactionEntry) and entry.creates_grant
    assert (entry.grant_id, entry.grant_expires_ms, entry.grant_priority, entry.grant_source) == (
        "g-1", 1900000000000, 10, "promotion",
    )  # fmt: skip
    for never in ({k: v for k, v in GRANT.items() if k != "gx"}, {**GRANT, "gx": "0"}):
        parsed = parse_entry("1-0", never)
        assert isinstance(parsed, TransactionEntry) and parsed.grant_expires_ms is None
    assert not entry.resets_monthly


def test_a_spend_reads_its_draws_in_order() -> None:
    entry = parse_entry("1-0", {**SPEND, "amt": "-9", "gd": "g-2:4,g-1:5"})
    assert isinstance(entry, TransactionEntry)
    assert entry.grant_draws == (("g-2", 4), ("g-1", 5)) and entry.touches_grants


def test_an_expiry_of_a_grant_is_no_monthly_reset() -> None:
    fields = {"id": "x", "a": "alice", "amt": "-7", "t": "expire", "bal": "3", "gr": "g-1"}
    entry = parse_entry("1-0", fields)
    assert isinstance(entry, TransactionEntry) and entry.grant_id == "g-1"
    assert not entry.resets_monthly
    without = parse_entry("1-0", {k: v for k, v in fields.items() if k != "gr"})
    assert isinstance(without, TransactionEntry) and without.resets_monthly


BAD_GRANT_FIELDS = [
    ("gd not pairs", {**SPEND, "gd": "g-1"}),
    ("gd credits zero", {**SPEND, "gd": "g-1:0"}),
    ("gd a grant twice", {**SPEND, "amt": "-9", "gd": "g-1:1,g-1:2"}),
    ("gd past the spend", {**SPEND, "gd": "g-1:4"}),
    ("gd on a refund", {**SPEND, "t": "refund", "amt": "3", "gd": "g-1:1"}),
    ("gx without gr", {**SPEND, "gx": "5"}),
    ("gr on a spend", {**SPEND, "gr": "g-1"}),
    ("gs on an expiry", {"id": "x", "a": "a", "amt": "-1", "t": "expire", "bal": "0",
                         "gr": "g", "gs": "promotion"}),
    ("priority not a number", {**GRANT, "gp": "high"}),
    ("priority below 0", {**GRANT, "gp": "-1"}),
    ("no source", {k: v for k, v in GRANT.items() if k != "gs"}),
    ("expiry past year 9999", {**GRANT, "gx": "253402300800000"}),
    ("expiry before 1970", {**GRANT, "gx": "-1"}),
    ("a grant of nothing", {**GRANT, "amt": "0"}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "fields"), BAD_GRANT_FIELDS, ids=[c[0] for c in BAD_GRANT_FIELDS])
def test_bad_grant_fields_are_refused(name: str, fields: dict[str, str]) -> None:
    with pytest.raises(OutboxEntryInvalid, match="cannot be read"):
        parse_entry("1-0", fields)
