"""Usage over time: credits spent, granted, refunded... per window, resource or account.

    report = await account_usage(engine, ledger, "acct-1", UsageRange.parse(...))
    report = await all_usage(engine, ledger, UsageRange.parse(...), group_by="account")

Where the numbers come from:

- The ledger's part from ``usage_hourly`` (per account, UTC hour, resource and type), which a
  trigger on ``credit_transactions`` keeps in the transaction of every insert (migration
  0003); every account by resource from ``usage_hourly_totals``, kept by the same trigger.
  A month of one account is at most 720 hours of it, whatever the number of its
  transactions, and other windows (day, month) are sums of hours.
- The outbox's part: transactions Redis accepted that the flush has not yet brought to the
  ledger. The outbox is read first (the account's partition, or every partition), then, in one
  PostgreSQL snapshot, the hours and which of the read transactions the ledger already holds;
  those that it does not are added to their window and counted in ``pending``. A transaction
  flushed between the two reads is found in the ledger and counted once. Each partition's
  outbox is read up to ``history.PENDING_SCAN_LIMIT`` entries; past it (the flush far behind)
  the report says ``pending_complete: false``.

Pools (docs/pools.md): a pool's usage counts every row of the pool, its members' charges
included; ``group_by="member"`` splits it into one group per member and the pool's own
charges (member None). A member's usage counts its own rows and its pool's spends that name
it. What the pool paid per member comes from ``credit_transactions`` itself (its member
index), as the hourly rollup is per account.

Windows are UTC: an hour, a day from midnight, a month from its first day. ``from`` is moved
back to the start of its window and ``to`` forward to the end of its own, so each window in
the answer is whole.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, cast, get_args

import asyncpg

from quotagate.engine import CreditEngine
from quotagate.errors import OutboxEntryInvalid, ValidationError
from quotagate.ledger import members
from quotagate.ledger.history import (
    PENDING_SCAN_LIMIT,
    PRESENT_SQL,
    SCAN_CHUNK,
    is_own_or_paid_for,
    partitions_of,
)
from quotagate.ledger.ledger import Ledger
from quotagate.ledger.outbox import RawEntries, TransactionEntry, parse_entry
from quotagate.ledger.postgres import in_transaction

Window = Literal["hour", "day", "month"]
GroupBy = Literal["resource", "account"]
"""How every account's usage is grouped."""
AccountGroupBy = Literal["resource", "member"]
"""How one account's usage is grouped: by resource, or (a pool's) by member."""
Grouping = Literal["resource", "account", "member"]
WINDOWS: tuple[Window, ...] = get_args(Window)
GROUPS: tuple[GroupBy, ...] = get_args(GroupBy)
ACCOUNT_GROUPS: tuple[AccountGroupBy, ...] = get_args(AccountGroupBy)

MAX_WINDOWS = 2000
"""Most windows one query may span (2000 hours is about 83 days): an answer stays small."""

DEFAULT_SPAN = {"hour": timedelta(days=1), "day": timedelta(days=30), "month": timedelta(days=365)}
"""How far back ``from`` reaches when the query does not say."""

DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
"""Groups (accounts or resources) the all-accounts form returns, those that spent most."""

_FIELD_OF_TYPE = {
    "spend": "spent",
    "grant": "granted",
    "earn": "earned",
    "refund": "refunded",
    "expire": "expired",
    "adjust": "adjusted",
}
_NEGATED = frozenset({"spend", "expire"})
"""Types whose ledger amounts are negative; the report shows them as positive credits."""


@dataclass(frozen=True, slots=True)
class UsageRange:
    """Whole windows from ``start`` (included) to ``end`` (excluded), UTC."""

    start: datetime
    end: datetime
    window: Window

    @classmethod
    def parse(
        cls, start: str | None, end: str | None, window: str | None, *, now: datetime | None = None
    ) -> UsageRange:
        """From the query's ``from``, ``to`` and ``window``; ValidationError names the one
        that is wrong."""
        kind = window or "day"
        if kind not in WINDOWS:
            raise ValidationError(f"window must be one of {', '.join(WINDOWS)}", field="window")
        size: Window = kind
        last = parse_instant(end, "to") if end else (now or datetime.now(UTC))
        first = parse_instant(start, "from") if start else last - DEFAULT_SPAN[size]
        if first >= last:
            raise ValidationError("from must be before to", field="from")
        usage_range = cls(window_start(first, size), _window_end(last, size), size)
        if usage_range.windows() > MAX_WINDOWS:
            raise ValidationError(
                f"at most {MAX_WINDOWS} {size} windows in one query", field="from"
            )
        return usage_range

    def windows(self) -> int:
        if self.window == "month":
            return (self.end.year - self.start.year) * 12 + self.end.month - self.start.month
        step = timedelta(hours=1) if self.window == "hour" else timedelta(days=1)
        return (self.end - self.start) // step

    def holds_ms(self, created_ms: int) -> bool:
        return self.start.timestamp() * 1000 <= created_ms < self.end.timestamp() * 1000


def parse_instant(text: str, name: str) -> datetime:
    """An ISO 8601 date or time (UTC when it names no zone); ValidationError names ``name``."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            f"{name} must be an ISO 8601 date or time, such as 2026-12-01T00:00:00Z", field=name
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def window_start(moment: datetime, window: Window) -> datetime:
    """The start of the UTC window ``moment`` falls in."""
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if window == "hour":
        return moment
    moment = moment.replace(hour=0)
    return moment if window == "day" else moment.replace(day=1)


def _window_end(moment: datetime, window: Window) -> datetime:
    start = window_start(moment, window)
    if start == moment:
        return start
    if window == "hour":
        return start + timedelta(hours=1)
    if window == "day":
        return start + timedelta(days=1)
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


@dataclass(slots=True)
class UsageRow:
    """One window of one group: credits by kind (all positive but ``adjusted``, signed)."""

    window_start: datetime
    account_id: str | None
    resource: str | None
    member_id: str | None = None
    """Grouped by member: the member the pool paid for; None for the pool's own charges."""
    spent: int = 0
    granted: int = 0
    earned: int = 0
    refunded: int = 0
    expired: int = 0
    adjusted: int = 0
    units: int = 0
    """Units of the spends."""
    transactions: int = 0
    pending: int = 0
    """Of ``transactions``, those still only in the outbox."""

    def add(self, kind: str, amount: int, units: int, count: int, pending: int = 0) -> None:
        name = _FIELD_OF_TYPE[kind]
        setattr(self, name, getattr(self, name) + (-amount if kind in _NEGATED else amount))
        if kind == "spend":
            self.units += units
        self.transactions += count
        self.pending += pending


@dataclass(slots=True)
class UsageReport:
    range: UsageRange
    group_by: Grouping
    rows: list[UsageRow] = field(default_factory=list)
    pending: int = 0
    """Outbox transactions counted in the rows (not yet in the ledger)."""
    pending_complete: bool = True
    """False when an outbox held more than the read looks at: some pending ones are missing."""


@dataclass(frozen=True, slots=True)
class _Scan:
    entries: list[TransactionEntry]
    complete: bool


_GroupKey = tuple[datetime, str | None, str | None, str | None]
"""(window start, account or None, resource or None, member or None)."""


class _Rows:
    """The report's rows as they are summed, by window and group. ``account_id``: the one
    account the report is of (its pool's rows that name it count as its own)."""

    def __init__(self, window: Window, group_by: Grouping, account_id: str | None) -> None:
        self.window, self.group_by, self.account_id = window, group_by, account_id
        self.rows: dict[_GroupKey, UsageRow] = {}

    def key(
        self, moment: datetime, account_id: str, resource: str | None, member_id: str | None = None
    ) -> _GroupKey:
        start = window_start(moment, self.window)
        if self.group_by == "account":
            return (start, account_id, None, None)
        if self.group_by == "member":
            return (start, self.account_id, None, member_id or None)
        return (start, self.account_id, resource or None, None)

    def add(
        self, key: _GroupKey, kind: str, amount: int, units: int, count: int, pending: int = 0
    ) -> None:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = UsageRow(*key)
        row.add(kind, amount, units, count, pending)

    def sorted(self) -> list[UsageRow]:
        return sorted(
            (row for row in self.rows.values() if row.transactions),
            key=lambda r: (r.window_start, r.account_id or "", r.resource or "", r.member_id or ""),
        )


_ACCOUNT_HOURS_SQL = """
SELECT date_trunc($4, hour, 'UTC') AS window_start, resource, type,
       sum(amount)::bigint AS amount, sum(units)::bigint AS units,
       sum(transactions)::bigint AS transactions
FROM usage_hourly
WHERE account_id = $1 AND hour >= $2 AND hour < $3
GROUP BY 1, 2, 3
"""

_PAID_FOR_MEMBER_SQL = """
SELECT date_trunc($5, created_at, 'UTC') AS window_start, coalesce(resource, '') AS resource,
       type, sum(amount)::bigint AS amount, coalesce(sum(units), 0)::bigint AS units,
       count(*)::bigint AS transactions
FROM credit_transactions
WHERE account_id = $1 AND member_id = $2 AND created_at >= $3 AND created_at < $4
GROUP BY 1, 2, 3
"""
# A member's part of its pool's rows, summed as usage_hourly sums (ix_..._member_history).

_POOL_MEMBERS_SQL = """
SELECT date_trunc($4, created_at, 'UTC') AS window_start, member_id, type,
       sum(amount)::bigint AS amount, coalesce(sum(units), 0)::bigint AS units,
       count(*)::bigint AS transactions
FROM credit_transactions
WHERE account_id = $1 AND member_id IS NOT NULL AND created_at >= $2 AND created_at < $3
GROUP BY 1, 2, 3
"""
# What a pool paid for each of its members; the pool's own charges are the rest of its hours.

_RESOURCE_HOURS_SQL = """
SELECT date_trunc($3, hour, 'UTC') AS window_start, resource, type,
       sum(amount)::bigint AS amount, sum(units)::bigint AS units,
       sum(transactions)::bigint AS transactions
FROM usage_hourly_totals
WHERE hour >= $1 AND hour < $2
GROUP BY 1, 2, 3
"""
# All accounts by resource: the totals (a few rows per hour), not one row per account.

_TOP_SPENDERS_SQL = """
SELECT account_id, -coalesce(sum(amount) FILTER (WHERE type = 'spend'), 0)::bigint AS spent
FROM usage_hourly
WHERE hour >= $1 AND hour < $2
GROUP BY account_id
ORDER BY spent DESC, account_id
LIMIT $3
"""
# Every account active in the range takes part (one that spent nothing, last), so that the
# answer lists up to ``limit`` of them, as it does per resource.

_ACCOUNTS_HOURS_SQL = """
SELECT date_trunc($3, hour, 'UTC') AS window_start, account_id, type,
       sum(amount)::bigint AS amount, sum(units)::bigint AS units,
       sum(transactions)::bigint AS transactions
FROM usage_hourly
WHERE hour >= $1 AND hour < $2 AND account_id = ANY($4::text[])
GROUP BY 1, 2, 3
"""


DELETE_ACCOUNTS_ROWS_SQL = """
WITH gone AS (
    DELETE FROM credit_transactions WHERE account_id = ANY($1::text[])
    RETURNING account_id, created_at, resource, type, amount, units
),
sums AS (
    SELECT date_trunc('hour', created_at, 'UTC') AS hour, coalesce(resource, '') AS resource,
           type, (abs(hashtext(account_id)) % 16)::smallint AS shard, sum(amount) AS amount,
           coalesce(sum(units), 0) AS units, count(*) AS transactions
    FROM gone GROUP BY 1, 2, 3, 4
),
totals AS (
    UPDATE usage_hourly_totals t SET amount = t.amount - s.amount, units = t.units - s.units,
        transactions = t.transactions - s.transactions
    FROM sums s
    WHERE (t.hour, t.resource, t.type, t.shard) = (s.hour, s.resource, s.type, s.shard)
)
DELETE FROM usage_hourly WHERE account_id = ANY($1::text[])
"""
"""Take accounts' rows out of the ledger with their sums (benchmarks only: the ledger's rows
are never deleted otherwise). 16: the totals' shards (migration 0003)."""


async def account_usage(
    engine: CreditEngine,
    ledger: Ledger,
    account_id: str,
    usage_range: UsageRange,
    *,
    group_by: AccountGroupBy = "resource",
) -> UsageReport:
    """One account's usage per window and resource (or, for a pool, per member), pending
    outbox entries included. A member's counts its pool's spends that name it."""
    members.check_account_or_member_id(account_id)
    pool_id = members.pool_of(account_id)
    if group_by not in ACCOUNT_GROUPS:
        raise ValidationError("group_by must be member", field="group_by")
    if group_by == "member" and pool_id is not None:
        raise ValidationError("group_by=member is for a pool's usage", field="group_by")
    partitions = partitions_of(engine, account_id)
    scan = await _scan_outbox(engine, partitions, usage_range, account_id)
    rows = _Rows(usage_range.window, group_by, account_id)

    async def read(conn: asyncpg.Connection) -> set[str]:
        args = (account_id, usage_range.start, usage_range.end, usage_range.window)
        for r in await conn.fetch(_ACCOUNT_HOURS_SQL, *args):
            key = (r["window_start"], account_id, r["resource"] or None, None)
            if group_by == "member":
                key = (r["window_start"], account_id, None, None)
            rows.add(key, r["type"], r["amount"], r["units"], r["transactions"])
        if group_by == "member":
            await _members_rows(conn, account_id, usage_range, rows)
        elif pool_id is not None:
            await _paid_for_member_rows(conn, pool_id, account_id, usage_range, rows)
        return await _present(conn, scan.entries)

    present = await _snapshot(ledger, read)
    return _report(usage_range, group_by, rows, scan, present)


async def _paid_for_member_rows(
    conn: asyncpg.Connection, pool_id: str, member_id: str, usage_range: UsageRange, rows: _Rows
) -> None:
    """Add to a member's rows what its pool paid for it."""
    args = (pool_id, member_id, usage_range.start, usage_range.end, usage_range.window)
    for r in await conn.fetch(_PAID_FOR_MEMBER_SQL, *args):
        key = (r["window_start"], member_id, r["resource"] or None, None)
        rows.add(key, r["type"], r["amount"], r["units"], r["transactions"])


async def _members_rows(
    conn: asyncpg.Connection, pool_id: str, usage_range: UsageRange, rows: _Rows
) -> None:
    """Move what the pool paid for each member from the pool's own rows (which ``rows`` holds
    whole) to that member's."""
    args = (pool_id, usage_range.start, usage_range.end, usage_range.window)
    for r in await conn.fetch(_POOL_MEMBERS_SQL, *args):
        start, kind = r["window_start"], r["type"]
        amount, units, count = r["amount"], r["units"], r["transactions"]
        rows.add((start, pool_id, None, None), kind, -amount, -units, -count)
        rows.add((start, pool_id, None, r["member_id"]), kind, amount, units, count)


async def all_usage(
    engine: CreditEngine,
    ledger: Ledger,
    usage_range: UsageRange,
    *,
    group_by: GroupBy = "resource",
    limit: int = DEFAULT_LIMIT,
) -> UsageReport:
    """Every account's usage per window, by resource or by account: the ``limit`` groups
    that spent most over the whole range (then by name), pending outbox entries included."""
    _check_limit(limit)
    scan = await _scan_outbox(engine, range(engine.config.partitions), usage_range, None)
    rows = _Rows(usage_range.window, group_by, None)
    if group_by == "resource":
        present = await _snapshot(
            ledger, lambda conn: _resource_rows(conn, usage_range, rows, scan)
        )
    else:
        present = await _snapshot(
            ledger, lambda conn: _account_rows(conn, usage_range, rows, scan, limit)
        )
    report = _report(usage_range, group_by, rows, scan, present)
    report.rows = _top_groups(report.rows, group_by, limit)
    return report


async def _resource_rows(
    conn: asyncpg.Connection, usage_range: UsageRange, rows: _Rows, scan: _Scan
) -> set[str]:
    args = (usage_range.start, usage_range.end, usage_range.window)
    for r in await conn.fetch(_RESOURCE_HOURS_SQL, *args):
        key = (r["window_start"], None, r["resource"] or None, None)
        rows.add(key, r["type"], r["amount"], r["units"], r["transactions"])
    return await _present(conn, scan.entries)


async def _account_rows(
    conn: asyncpg.Connection, usage_range: UsageRange, rows: _Rows, scan: _Scan, limit: int
) -> set[str]:
    """The windows of the accounts that may be among the ``limit`` that spent most: the
    ledger's top ``limit``, and every account with pending entries (pending spends only add,
    so no other account can overtake the ledger's top ones). The pick itself is made once
    the pending entries are added (``_top_groups``)."""
    start, end = usage_range.start, usage_range.end
    top = [r["account_id"] for r in await conn.fetch(_TOP_SPENDERS_SQL, start, end, limit)]
    candidates = sorted({*top, *(e.account_id for e in scan.entries)})
    hours = await conn.fetch(_ACCOUNTS_HOURS_SQL, start, end, usage_range.window, candidates)
    for r in hours:
        key = (r["window_start"], r["account_id"], None, None)
        rows.add(key, r["type"], r["amount"], r["units"], r["transactions"])
    return await _present(conn, scan.entries)


def _top_groups(rows: list[UsageRow], group_by: GroupBy, limit: int) -> list[UsageRow]:
    spent: dict[str, int] = {}
    for row in rows:
        name = _group_name(row, group_by)
        spent[name] = spent.get(name, 0) + row.spent
    chosen = set(sorted(spent, key=lambda name: (-spent[name], name))[:limit])
    return [row for row in rows if _group_name(row, group_by) in chosen]


def _group_name(row: UsageRow, group_by: GroupBy) -> str:
    return (row.account_id if group_by == "account" else row.resource) or ""


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit")


async def _snapshot(
    ledger: Ledger, work: Callable[[asyncpg.Connection], Awaitable[set[str]]]
) -> set[str]:
    """Run ``work`` in one snapshot: the hours and the ledger's ids of the pending entries
    are read at the same moment, so no transaction is counted twice or missed."""
    return await in_transaction(ledger.pool, work, isolation="repeatable_read", readonly=True)


def _report(
    usage_range: UsageRange, group_by: Grouping, rows: _Rows, scan: _Scan, present: set[str]
) -> UsageReport:
    report = UsageReport(usage_range, group_by, pending_complete=scan.complete)
    for e in scan.entries:
        if e.id in present:
            continue
        moment = datetime.fromtimestamp(e.created_ms / 1000, UTC)
        key = rows.key(moment, e.account_id, e.resource, e.member_id)
        rows.add(key, e.type, e.amount, e.units or 0, 1, 1)
        report.pending += 1
    report.rows = rows.sorted()
    return report


async def _present(conn: asyncpg.Connection, entries: Sequence[TransactionEntry]) -> set[str]:
    if not entries:
        return set()
    return {r["id"] for r in await conn.fetch(PRESENT_SQL, [e.id for e in entries])}


async def _scan_outbox(
    engine: CreditEngine,
    partitions: Iterable[int],
    usage_range: UsageRange,
    account_id: str | None,
) -> _Scan:
    """The transactions in these partitions' outboxes made within the range (of one account,
    with its pool's spends that name it, or of all), each partition read up to
    ``PENDING_SCAN_LIMIT`` entries from its oldest."""
    found: list[TransactionEntry] = []
    complete = True
    for partition in partitions:
        key = engine.keys.outbox(partition)
        start, scanned = "-", 0
        while True:
            if scanned >= PENDING_SCAN_LIMIT:
                complete = False
                break
            want = min(SCAN_CHUNK, PENDING_SCAN_LIMIT - scanned)
            raw = cast(RawEntries, await engine.redis.xrange(key, start, "+", count=want))
            scanned += len(raw)
            matching, readable = _matching(raw, usage_range, account_id)
            found += matching
            complete = complete and readable
            if len(raw) < want:
                break
            start = "(" + raw[-1][0]
    return _Scan(found, complete)


def _matching(
    raw: RawEntries, usage_range: UsageRange, account_id: str | None
) -> tuple[list[TransactionEntry], bool]:
    """The entries that count, and False if one could not be read (the flush quarantines
    it; until then the report is incomplete)."""
    out, readable = [], True
    pool_id = members.pool_of(account_id) if account_id else None
    for stream_id, fields in raw:
        if fields.get("t") == "account":
            continue
        if account_id and not is_own_or_paid_for(fields, account_id, pool_id):
            continue
        try:
            entry = parse_entry(stream_id, fields)
        except OutboxEntryInvalid:
            readable = False
            continue
        if isinstance(entry, TransactionEntry) and usage_range.holds_ms(entry.created_ms):
            out.append(entry)
    return out, readable
