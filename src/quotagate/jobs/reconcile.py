"""Reconciliation: measure the books of every account and name every drift.

Two checks per account (see :mod:`quotagate.ledger.books` for how each side is read):

- ``redis``: the Redis balance against the snapshot plus the outbox entries not yet in the
  ledger. A difference means Redis changed without an outbox entry (a write behind the
  engine's back), or Redis lost writes the ledger has, or lost the account.
- ``ledger``: the snapshot against the sum of the ledger rows. A difference means a row or
  the snapshot was changed outside the flush.

And two per explicit grant:

- ``redis_grant``: what Redis holds left of the grant against ``credit_grants`` plus the
  outbox entries not yet in the ledger (its creation, the spends' draws, its expiry or void):
  the sum of the grants is the balance, so this checks each part of it.

And one per member of a pool (docs/pools.md), when Redis counts its usage in the pool's
current period (its ``pp`` is the pool's ``rp``):

- ``pool_usage``: what Redis holds the pool paid for the member in the period (``pu``)
  against the pool's spends naming it since the pool's last reset, in the ledger and among the
  outbox entries not yet in it (``quotagate.ledger.pool_usage``). A member's limit is checked
  against ``pu``, so a difference lets it spend more (or less) of the pool than its limit.

The member settings (limit, own credits first) are not compared, as no account setting is.

In PostgreSQL alone:

- ``grant``: a grant's ``remaining`` against its amount less what the ledger's rows took from
  it (the spends' ``grant_draws``, its expire or void row). The flush changes both in one
  transaction, so a difference means a row or the grant was changed outside it.

Accounts are walked per partition with SCAN; accounts the ledger knows and Redis does not are
found by one pass over ``user_credits``. A ``redis`` difference can be a flush committing
between the two readings, so such an account is read again, alone, before it is reported.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from quotagate.engine import CreditEngine
from quotagate.errors import AccountNotLoaded
from quotagate.jobs import runtime
from quotagate.jobs.pg import postgres_errors
from quotagate.jobs.scan import account_batches_by_scan
from quotagate.ledger import Ledger
from quotagate.ledger.books import AccountBooks, OutboxIndex, read_books

log = logging.getLogger(__name__)

RECHECKS = 3
"""Fresh readings of an account that looked off before it is reported (flushes move on)."""

RECHECK_PAUSE_SECONDS = 0.2

RECHECKED = frozenset({"redis", "redis_grant", "pool_usage"})
"""The checks that compare Redis with the ledger: a flush committing between the two readings
can make them differ for a moment, so an account is read again before it is reported."""

PARALLEL_PARTITIONS = 4
"""Partitions reconciled at once."""

LEDGER_PAGE = 1000
"""Snapshot rows read per batch in the pass that looks for accounts missing from Redis."""

CAUSES = {
    "redis": "Redis balance changed without an outbox entry (a write behind the engine's back,"
    " or Redis lost writes the ledger has)",
    "missing_in_redis": "the ledger has this account and Redis does not (Redis lost it)",
    "missing_in_ledger": "Redis has this account and the ledger has no record of it"
    " (created behind the engine's back, or its outbox entries were lost)",
    "ledger": "the user_credits snapshot disagrees with the sum of the account's"
    " credit_transactions rows (one of them was changed outside the flush)",
    "redis_grant": "what Redis holds left of an explicit grant disagrees with credit_grants"
    " plus the outbox entries not yet in the ledger (the account hash's grants were changed"
    " behind the engine's back, or Redis lost writes the ledger has)",
    "pool_usage": "what Redis holds the pool paid for the member in the pool's period (pu)"
    " disagrees with the pool's spends naming it since the pool's last reset, in the ledger"
    " and the outbox (the member's hash was changed behind the engine's back, or Redis lost"
    " writes the ledger has)",
    "grant": "credit_grants.remaining disagrees with the grant's amount less the draws, expiry"
    " and void its credit_transactions rows record (one of them was changed outside the flush)",
    "grant_unknown": "credit_transactions rows take credits from a grant that credit_grants"
    " does not hold for the account (its row was lost, or a row names the wrong grant)",
}

GRANT_DRIFT_SQL = """
WITH taken AS (
    SELECT t.account_id, d.key AS grant_id, d.value::bigint AS credits
    FROM credit_transactions t CROSS JOIN LATERAL jsonb_each_text(t.grant_draws) AS d
    WHERE t.grant_draws IS NOT NULL
    UNION ALL
    SELECT account_id, grant_id, -amount
    FROM credit_transactions
    WHERE grant_id IS NOT NULL AND type IN ('expire', 'adjust')
), per_grant AS (
    SELECT account_id, grant_id, sum(credits) AS credits
    FROM taken
    GROUP BY account_id, grant_id
)
SELECT coalesce(g.id, p.grant_id) AS id, coalesce(g.account_id, p.account_id) AS account_id,
       g.remaining, g.amount - coalesce(p.credits, 0) AS expected, p.credits AS taken
FROM credit_grants g
FULL JOIN per_grant p ON p.grant_id = g.id AND p.account_id = g.account_id
WHERE g.id IS NULL OR g.remaining <> g.amount - coalesce(p.credits, 0)
"""
"""The grants whose remaining is not what the ledger's rows leave of them, and the grants rows
take from that ``credit_grants`` does not hold for their account: one pass over the rows that
name a grant (few next to the spends; the filters read only them)."""


@dataclass(frozen=True)
class Drift:
    """One account whose books do not balance."""

    account_id: str
    partition: int
    check: str
    """ "redis" (Redis vs snapshot + pending), "ledger" (snapshot vs sum of rows),
    "redis_grant" and "grant" (an explicit grant's remaining), or "pool_usage" (a member's
    usage of its pool in the period)."""
    expected: int | None
    found: int | None
    cause: str
    grant_id: str | None = None
    """For a ``grant`` drift: the grant's id."""

    @property
    def difference(self) -> int:
        return (self.found or 0) - (self.expected or 0)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "difference": self.difference}


@dataclass
class Report:
    accounts: int = 0
    drifts: list[Drift] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        return not self.drifts

    def to_dict(self) -> dict[str, object]:
        return {
            "balanced": self.balanced,
            "accounts": self.accounts,
            "drifts": [d.to_dict() for d in self.drifts],
        }


def judge(account_id: str, partition: int, books: AccountBooks) -> list[Drift]:
    """The drifts one reading shows (none when both checks hold)."""
    drifts = []
    pending = books.pending.credits
    if books.redis_credits is None:
        if books.snapshot is not None or pending:
            drifts.append(
                Drift(account_id, partition, "redis", books.expected_in_redis, None,
                      CAUSES["missing_in_redis"])
            )  # fmt: skip
    elif books.drift:
        cause = "missing_in_ledger" if books.snapshot is None and not pending else "redis"
        drifts.append(
            Drift(account_id, partition, "redis", books.expected_in_redis, books.redis_credits,
                  CAUSES[cause])
        )  # fmt: skip
    if books.redis_credits is not None:
        for grant_id, expected, found in books.grant_drifts():
            drifts.append(
                Drift(account_id, partition, "redis_grant", expected, found,
                      CAUSES["redis_grant"], grant_id)
            )  # fmt: skip
    usage = books.pool_usage
    if books.redis_credits is not None and usage is not None and usage.drift:
        drifts.append(
            Drift(account_id, partition, "pool_usage", usage.expected, usage.redis_used,
                  CAUSES["pool_usage"])
        )  # fmt: skip
    if books.ledger_drift:
        snapshot = books.snapshot.credits if books.snapshot else None
        drifts.append(
            Drift(account_id, partition, "ledger", books.ledger_credits, snapshot,
                  CAUSES["ledger"])
        )  # fmt: skip
    return drifts


async def confirm(
    engine: CreditEngine,
    ledger: Ledger,
    partition: int,
    account_ids: list[str],
    index: OutboxIndex,
) -> list[Drift]:
    """Read accounts that looked off again; a ``redis`` drift is real if no reading balances.

    The outbox index stays valid across readings: an entry trimmed since it was read was
    committed to Postgres first, and the ledger reading then counts it as flushed.
    """
    found: list[Drift] = []
    remaining = account_ids
    for attempt in range(RECHECKS):
        if not remaining:
            break
        if attempt:
            await asyncio.sleep(RECHECK_PAUSE_SECONDS)
        books = await read_books(engine, ledger, partition, remaining, index)
        still: list[str] = []
        for a in remaining:
            drifts = judge(a, partition, books[a])
            if any(d.check in RECHECKED for d in drifts) and attempt < RECHECKS - 1:
                still.append(a)
            else:
                found.extend(drifts)
        remaining = still
    return found


async def reconcile_partition(engine: CreditEngine, ledger: Ledger, partition: int) -> Report:
    """Check every account Redis holds in one partition."""
    report = Report()
    index = OutboxIndex(engine, partition)
    seen: set[tuple[str, str, str | None]] = set()  # SCAN may return a key twice: report once
    async for batch in account_batches_by_scan(engine, partition):
        batch = list(dict.fromkeys(batch))
        books = await read_books(engine, ledger, partition, batch, index)
        drifts: list[Drift] = []
        suspects: list[str] = []
        for account_id, b in books.items():
            first = judge(account_id, partition, b)
            if any(d.check in RECHECKED for d in first):
                suspects.append(account_id)
            else:
                drifts.extend(first)
        drifts.extend(await confirm(engine, ledger, partition, suspects, index))
        for d in drifts:
            if (d.account_id, d.check, d.grant_id) not in seen:
                seen.add((d.account_id, d.check, d.grant_id))
                report.drifts.append(d)
        report.accounts += len(batch)
    return report


async def reconcile_missing(engine: CreditEngine, ledger: Ledger, partitions: set[int]) -> Report:
    """Accounts the ledger holds (in ``partitions``) that Redis does not."""
    report = Report()
    with postgres_errors():
        async with ledger.pool.acquire() as conn, conn.transaction(readonly=True):
            page: list[str] = []
            async for row in conn.cursor("SELECT account_id FROM user_credits"):
                if engine.keys.partition_of(row["account_id"]) in partitions:
                    page.append(row["account_id"])
                if len(page) >= LEDGER_PAGE:
                    report.drifts.extend(await _missing_in(engine, ledger, page))
                    page = []
            report.drifts.extend(await _missing_in(engine, ledger, page))
    return report


async def _missing_in(engine: CreditEngine, ledger: Ledger, account_ids: list[str]) -> list[Drift]:
    if not account_ids:
        return []
    async with engine.redis.pipeline(transaction=False) as pipe:
        for a in account_ids:
            pipe.exists(engine.keys.account(a).account)
        exists = await pipe.execute()
    by_partition: dict[int, list[str]] = {}
    for a, e in zip(account_ids, exists, strict=True):
        if not e:
            by_partition.setdefault(engine.keys.partition_of(a), []).append(a)
    drifts: list[Drift] = []
    for p, gone in sorted(by_partition.items()):
        drifts.extend(await confirm(engine, ledger, p, gone, OutboxIndex(engine, p)))
    return drifts


async def reconcile_async(
    engine: CreditEngine,
    ledger: Ledger,
    *,
    partitions: list[int] | None = None,
    on_partition: Callable[[int, Report], None] | None = None,
) -> Report:
    """Both checks over every account of the given partitions (default: all)."""
    if not await engine.is_ready():
        raise AccountNotLoaded(
            "Redis has not been recovered since it lost its data; run `quotagate recover` first"
        )
    todo = list(range(engine.config.partitions)) if partitions is None else partitions
    gate = asyncio.Semaphore(PARALLEL_PARTITIONS)
    total = Report()

    async def one(p: int) -> None:
        async with gate:
            part = await reconcile_partition(engine, ledger, p)
        total.accounts += part.accounts
        total.drifts.extend(part.drifts)
        if on_partition is not None:
            on_partition(p, part)

    await asyncio.gather(*(one(p) for p in todo))
    total.drifts.extend((await reconcile_missing(engine, ledger, set(todo))).drifts)
    total.drifts.extend(await reconcile_grants(engine, ledger, set(todo)))
    total.drifts.sort(key=lambda d: (d.account_id, d.check, d.grant_id or ""))
    return total


async def reconcile_grants(
    engine: CreditEngine, ledger: Ledger, partitions: set[int]
) -> list[Drift]:
    """The explicit grants (of accounts in ``partitions``) whose remaining disagrees with the
    ledger's rows."""
    with postgres_errors():
        async with ledger.pool.acquire() as conn, conn.transaction(readonly=True):
            rows = await conn.fetch(GRANT_DRIFT_SQL)
    drifts = []
    for r in rows:
        partition = engine.keys.partition_of(r["account_id"])
        if partition not in partitions:
            continue
        if r["remaining"] is None:  # no such grant: what the rows took is all there is
            drift = Drift(r["account_id"], partition, "grant", None, int(r["taken"]),
                          CAUSES["grant_unknown"], grant_id=r["id"])  # fmt: skip
        else:
            drift = Drift(r["account_id"], partition, "grant", int(r["expected"]),
                          int(r["remaining"]), CAUSES["grant"], grant_id=r["id"])  # fmt: skip
        drifts.append(drift)
    return drifts


def reconcile_report() -> dict[str, object]:
    """RQ job (scheduled daily): reconcile everything and log each drift; repairs nothing."""
    rt = runtime.current()

    async def work() -> Report:
        return await reconcile_async(await rt.engine(), await rt.ledger())

    report = rt.run(work())
    for d in report.drifts:
        log.warning(
            "drift: account %s (%s check) expected %s found %s: %s",
            d.account_id, d.check, d.expected, d.found, d.cause,
        )  # fmt: skip
    log.info("reconciliation: %d accounts, %d drifts", report.accounts, len(report.drifts))
    return report.to_dict()
