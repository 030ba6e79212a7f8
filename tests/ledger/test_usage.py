"""Usage queries: the hourly rollup kept by the ledger's trigger, windows, and the outbox's
pending entries counted once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import pytest

from quotagate.engine import CreditEngine
from quotagate.engine.results import RefundCount
from quotagate.errors import ValidationError
from quotagate.ledger import Ledger, flush_all, upgrade
from quotagate.ledger.outbox import read_all
from quotagate.ledger.usage import UsageRange, UsageRow, account_usage, all_usage

Acct = Callable[[str], str]


def _by_resource(rows: list[UsageRow]) -> dict[str | None, UsageRow]:
    assert len({r.resource for r in rows}) == len(rows), rows
    return {r.resource: r for r in rows}


async def _known_mix(engine: CreditEngine, account: str) -> str:
    """Opening grant 1000, 5 api_call (1 each), 3 x 2 premium_feature (10 each), a grant of
    40 and a refund of 1: returns the id of the grant."""
    await engine.upsert_account(account, tier="pro")
    spends = [(await engine.consume(account, "api_call")).transaction_id for _ in range(5)]
    for _ in range(3):
        await engine.consume(account, "premium_feature", 2)
    grant = await engine.credit(account, 40, "grant")
    await engine.credit(account, 1, "refund", refund_of=spends[0], counted=RefundCount(1, 0))
    return grant.transaction_id


def _assert_known_mix(rows: list[UsageRow], pending: dict[str | None, int]) -> None:
    by = _by_resource(rows)
    assert set(by) == {None, "api_call", "premium_feature"}
    assert (by["api_call"].spent, by["api_call"].units, by["api_call"].transactions) == (5, 5, 5)
    premium = by["premium_feature"]
    assert (premium.spent, premium.units, premium.transactions) == (30, 6, 3)
    other = by[None]
    assert (other.granted, other.refunded, other.spent, other.transactions) == (1040, 1, 0, 3)
    assert {r: by[r].pending for r in by} == {r: pending.get(r, 0) for r in by}


async def test_one_accounts_usage_counts_the_ledger_and_the_outbox_once(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("mix")
    grant_id = await _known_mix(lengine, a)
    partition = lengine.keys.partition_of(a)
    entries = [e for e in await read_all(lengine, partition) if e.account_id == a]
    # The grant in both places (written through, not yet flushed): counted once.
    assert await ledger.write_through(
        lengine, a, [e.stream_id for e in entries if e.id == grant_id]
    )
    span = UsageRange.parse(None, None, "hour")

    before = await account_usage(lengine, ledger, a, span)
    _assert_known_mix(before.rows, {None: 2, "api_call": 5, "premium_feature": 3})
    assert (before.pending, before.pending_complete) == (10, True)

    await flush_all(lengine, ledger, partitions=[partition])
    after = await account_usage(lengine, ledger, a, span)
    _assert_known_mix(after.rows, {})
    assert after.pending == 0
    for window in ("day", "month"):
        same = await account_usage(lengine, ledger, a, UsageRange.parse(None, None, window))
        _assert_known_mix(same.rows, {})


async def test_the_rollup_is_the_sum_of_the_ledger_after_reruns(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    accounts = [acct(f"rerun{i}") for i in range(4)]
    for a in accounts:
        await _known_mix(lengine, a)
    for p in range(lengine.config.partitions):
        entries = await read_all(lengine, p)
        # The same batch three times: the fast path, then the checked one twice.
        for _ in range(3):
            await ledger.apply_batch(entries, default_tier="free")
    async with ledger.pool.acquire() as conn:
        ledger_sums = await conn.fetch(
            "SELECT account_id, coalesce(resource, '') AS resource, type, sum(amount) AS amount,"
            " coalesce(sum(units), 0) AS units, count(*) AS n FROM credit_transactions"
            " WHERE account_id = ANY($1::text[]) GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            accounts,
        )
        rollup = await conn.fetch(
            "SELECT account_id, resource, type, sum(amount) AS amount, sum(units) AS units,"
            " sum(transactions) AS n FROM usage_hourly WHERE account_id = ANY($1::text[])"
            " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            accounts,
        )
    assert [tuple(r) for r in rollup] == [tuple(r) for r in ledger_sums]
    assert len(ledger_sums) == 4 * 4  # per account: grant, refund, two spent resources


async def _insert(
    conn: asyncpg.Connection, account: str, rows: list[tuple[str, int, str]], first: int = 0
) -> None:
    """Ledger rows at given times: (time, amount, type); spends are of api_call."""
    await conn.executemany(
        "INSERT INTO credit_transactions (id, account_id, amount, type, resource, units,"
        " balance_after, created_at) VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
        [
            (f"{account}-{i}", account, amount, kind, "api_call" if kind == "spend" else None,
             -amount if kind == "spend" else None, datetime.fromisoformat(at))
            for i, (at, amount, kind) in enumerate(rows, first)
        ],
    )  # fmt: skip


async def test_windows_are_utc_hours_days_and_months(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("windows")
    async with ledger.pool.acquire() as conn:
        await _insert(conn, a, [
            ("2026-01-31T22:59:59.999+00:00", -1, "spend"),
            ("2026-01-31T23:00:00+00:00", -2, "spend"),
            ("2026-02-01T01:30:00+02:00", -4, "spend"),  # 2026-01-31T23:30Z
            ("2026-02-01T00:00:00+00:00", -8, "spend"),
            ("2026-02-01T00:00:00+00:00", 16, "grant"),
        ])  # fmt: skip

    async def spent(window: str, start: str, end: str) -> list[tuple[str, int]]:
        report = await account_usage(lengine, ledger, a, UsageRange.parse(start, end, window))
        return [(r.window_start.isoformat(), r.spent) for r in report.rows if r.spent]

    assert await spent("hour", "2026-01-31T22:00Z", "2026-02-01T01:00Z") == [
        ("2026-01-31T22:00:00+00:00", 1),
        ("2026-01-31T23:00:00+00:00", 6),
        ("2026-02-01T00:00:00+00:00", 8),
    ]
    assert await spent("day", "2026-01-31", "2026-02-02") == [
        ("2026-01-31T00:00:00+00:00", 7),
        ("2026-02-01T00:00:00+00:00", 8),
    ]
    assert await spent("month", "2026-01-15", "2026-02-15") == [
        ("2026-01-01T00:00:00+00:00", 7),
        ("2026-02-01T00:00:00+00:00", 8),
    ]
    # `from` goes back to its window's start, `to` on to its window's end.
    assert await spent("hour", "2026-01-31T21:00Z", "2026-01-31T22:00Z") == []
    assert await spent("hour", "2026-01-31T23:10Z", "2026-01-31T23:20Z") == [
        ("2026-01-31T23:00:00+00:00", 6)
    ]
    assert await spent("day", "2026-02-01T00:00Z", "2026-03-01T00:00Z") == [
        ("2026-02-01T00:00:00+00:00", 8)
    ]


def test_a_range_is_checked_before_anything_is_read() -> None:
    now = datetime(2026, 12, 2, 10, 30, tzinfo=UTC)
    day = UsageRange.parse(None, None, None, now=now)
    assert (day.window, day.start.isoformat(), day.end.isoformat()) == (
        "day", "2026-11-02T00:00:00+00:00", "2026-12-03T00:00:00+00:00",
    )  # fmt: skip
    assert UsageRange.parse("2026-11-30T23:00", "2026-12-01T00:00", "month").windows() == 1
    assert UsageRange.parse("2026-11-30T23:00", "2026-12-01T00:01", "month").windows() == 2
    assert UsageRange.parse("2026-12-31T23:00", "2027-01-01T01:00", "month").windows() == 2
    for start, end, window, name in (
        (None, None, "week", "window"),
        ("yesterday", None, "day", "from"),
        ("2026-12-01", "2026-13-01", "day", "to"),
        ("2026-12-02", "2026-12-01", "day", "from"),
        ("2026-01-01", "2026-12-01", "hour", "from"),  # more than MAX_WINDOWS hours
    ):
        with pytest.raises(ValidationError) as caught:
            UsageRange.parse(start, end, window, now=now)
        assert caught.value.extra["field"] == name


async def test_all_accounts_by_account_picks_those_that_spent_most(
    lengine: CreditEngine, empty_database_url: str, acct: Acct
) -> None:
    """The ledger's order can be overtaken by pending spends; limit keeps the top ones.
    A database of its own: every account in it counts."""
    await asyncio.to_thread(_migrate, empty_database_url, "head")
    own_ledger = await Ledger.connect(empty_database_url, max_connections=2)
    try:
        await _top_spenders(lengine, own_ledger, acct)
    finally:
        await own_ledger.aclose()


async def _top_spenders(lengine: CreditEngine, own_ledger: Ledger, acct: Acct) -> None:
    spends = {"a": 3, "b": 5, "c": 1, "d": 4}
    accounts = {name: acct(f"top-{name}") for name in spends}
    for name, a in accounts.items():
        await lengine.upsert_account(a, tier="pro")
        for _ in range(spends[name]):
            await lengine.consume(a, "api_call")
    await flush_all(lengine, own_ledger)
    for _ in range(3):  # c: 1 in the ledger, 3 pending, 4 in all: ties with d, sorts first
        await lengine.consume(accounts["c"], "api_call")
    span = UsageRange.parse(None, None, "day")

    report = await all_usage(lengine, own_ledger, span, group_by="account", limit=3)
    assert [(r.account_id, r.spent, r.pending) for r in report.rows] == sorted(
        [(accounts["b"], 5, 0), (accounts["c"], 4, 3), (accounts["d"], 4, 0)]
    )
    by_resource = await all_usage(lengine, own_ledger, span, group_by="resource", limit=10)
    assert [(r.resource, r.spent, r.granted, r.pending) for r in by_resource.rows] == [
        (None, 0, 4000, 0),
        ("api_call", 16, 0, 3),
    ]
    with pytest.raises(ValidationError):
        await all_usage(lengine, own_ledger, span, limit=0)


def _migrate(url: str, revision: str) -> None:
    upgrade(url, revision)


async def test_the_migration_sums_an_existing_ledger(empty_database_url: str) -> None:
    await asyncio.to_thread(_migrate, empty_database_url, "0002")
    conn = await asyncpg.connect(empty_database_url)
    try:
        await _insert(conn, "old", [
            ("2026-03-01T10:15:00+00:00", -3, "spend"),
            ("2026-03-01T10:45:00+00:00", -4, "spend"),
            ("2026-03-01T11:00:00+00:00", 50, "grant"),
        ])  # fmt: skip
        await asyncio.to_thread(_migrate, empty_database_url, "head")
        await _insert(conn, "old", [("2026-03-01T10:50:00+00:00", -5, "spend")], first=3)
        rows = await conn.fetch(
            "SELECT hour, resource, type, amount, units, transactions FROM usage_hourly"
            " WHERE account_id = 'old' ORDER BY hour, type"
        )
        totals = await conn.fetch(
            "SELECT hour, resource, type, sum(amount), sum(units), sum(transactions)"
            " FROM usage_hourly_totals GROUP BY 1, 2, 3 ORDER BY hour, type"
        )
    finally:
        await conn.close()
    assert [(r["hour"].hour, *tuple(r)[1:]) for r in rows] == [
        (10, "api_call", "spend", -12, 12, 3),
        (11, "", "grant", 50, 0, 1),
    ]
    assert [tuple(r) for r in totals] == [tuple(r) for r in rows]  # the only account here
