"""Recovery: rebuild every account's Redis state from the ledger after Redis lost its data.

While a partition's ``ready`` flag is missing, the scripts answer ``account_not_loaded`` for
any account they cannot find: a charge is refused, never run against a zero balance. This
pass copies each ``user_credits`` row into Redis (both buckets, tier, status, overdraft, the
renewed period its last renewal recorded) with the account's live explicit grants from
``credit_grants`` (each with what is left of it), then opens the partitions.

It refuses while the outboxes hold entries (the ledger would be behind Redis for those
accounts) unless forced. Forced, it leaves every account Redis still holds as it is, and
adds the effect of pending entries to the accounts it restores (to their balance: what
pending entries did to explicit grants is not replayed, so those credits count as purchased
ones). Accounts are restored with ``force=False``, so a second run, or one racing with
traffic, changes nothing that is there. Holds are not durable: restored accounts have none.

A pool's member (docs/pools.md) gets back its limit and own-credits-first from its row, and
what its pool paid for it in the pool's period (``pu``, counted in ``pp``): ``pp`` is the
period restored for the pool, and ``pu`` the pool's spends naming the member since the
pool's last reset, the instant that period comes from (``quotagate.ledger.pool_usage``), plus
the pending ones when forced.

Then it rebuilds the idempotency records of the ledger's consumes and credits still within
their window (:func:`rebuild_idempotency`), so a retry after the loss replays its first answer
instead of charging again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import asyncpg

from quotagate.engine import CreditEngine, idempotency, validate
from quotagate.engine.results import Grant
from quotagate.errors import RecoveryRefused
from quotagate.jobs import runtime
from quotagate.jobs.pg import postgres_errors
from quotagate.ledger import Ledger, members, outbox_lag
from quotagate.ledger.books import PendingEffect, pending_effects
from quotagate.ledger.pool_usage import MemberPeriod, member_periods

RESTORE_PAGE = 1000
"""Snapshot rows read and restored per batch (the restores of a batch share pipelines)."""

SNAPSHOT_COLUMNS = (
    "account_id, tier, status, credits, monthly_credits, overdraft_limit, last_reset_at,"
    " created_at, renewed_period, member_limit, own_credits_first"
)


@dataclass
class RecoveryTally:
    ledger_accounts: int = 0
    restored: int = 0
    already_present: int = 0
    outbox_entries: int = 0
    partitions_opened: int = 0
    idempotency_records: int = 0


def renewed_period(recorded: str | None, last_reset_at: datetime | None) -> str:
    """The renewal period an account was last renewed in ("" when never): the one its last
    renewal recorded, else (an account never renewed since it opened with its first grant)
    the month of its last reset."""
    if recorded:
        return recorded
    return last_reset_at.astimezone(UTC).strftime("%Y-%m") if last_reset_at else ""


LIVE_GRANTS_SQL = """
SELECT account_id, id, source, priority, amount, remaining, expires_at, created_at
FROM credit_grants
WHERE account_id = ANY($1::text[]) AND remaining > 0 AND ended_at IS NULL
"""
"""The explicit grants of these accounts that still hold credits. A grant past its expiry is
among them until its expire row reaches the ledger: restored, it expires at the account's
next script or in the sweep, which writes that row."""


async def live_grants(
    conn: asyncpg.Connection, account_ids: Sequence[str]
) -> dict[str, list[Grant]]:
    """The live explicit grants of each account (accounts without any left out)."""
    found: dict[str, list[Grant]] = {}
    for r in await conn.fetch(LIVE_GRANTS_SQL, list(account_ids)):
        found.setdefault(r["account_id"], []).append(
            Grant(
                id=r["id"], source=r["source"], priority=int(r["priority"]),
                amount=int(r["amount"]), remaining=int(r["remaining"]),
                expires_at=r["expires_at"], created_at=r["created_at"],
            )
        )  # fmt: skip
    return found


async def restore_row(
    engine: CreditEngine,
    row: asyncpg.Record,
    pending: PendingEffect | None = None,
    grants: Sequence[Grant] = (),
    member_state: Sequence[str] = (),
) -> bool:
    """Write one snapshot row (plus pending effects) and the account's live explicit grants
    into Redis unless the account is there. The snapshot's credits count the grants': what
    neither the monthly credits nor the grants hold is the purchased credits.
    ``member_state``: a member's, from :func:`member_state`."""
    a = row["account_id"]
    pending = pending or PendingEffect()
    credits = int(row["credits"]) + pending.credits
    monthly = int(row["monthly_credits"]) + pending.monthly_credits
    purchased = credits - monthly - sum(g.remaining for g in grants)
    period = renewed_period(row["renewed_period"], row["last_reset_at"])
    return await engine.restore(
        a, tier=row["tier"], status=row["status"],
        overdraft_limit=int(row["overdraft_limit"]), monthly_credits=monthly,
        purchased_credits=purchased, renewed_period=period,
        last_reset_at=row["last_reset_at"], created_at=row["created_at"], grants=grants,
        member_state=member_state,
    )  # fmt: skip


def member_state(
    row: asyncpg.Record, period: MemberPeriod | None, pool_pending: PendingEffect | None
) -> list[str]:
    """A member's restore arguments: limit ("" none), own credits first, and what its pool
    paid for it in the pool's period with that period ("" and "": the ledger has no row of the
    pool, so nothing to count against)."""
    account_id = row["account_id"]
    limit = row["member_limit"]
    state = ["" if limit is None else str(int(limit)), "1" if row["own_credits_first"] else ""]
    if period is None or not period.pool_known:
        return [*state, "", ""]
    paid = period.paid
    if pool_pending is not None:
        paid += pool_pending.paid_for(account_id, period.since_ms)
    pool_period = renewed_period(period.pool_renewed_period, period.pool_last_reset_at)
    return [*state, str(paid), pool_period]


def member_state_of(
    row: asyncpg.Record, periods: dict[str, MemberPeriod], pending: dict[str, PendingEffect]
) -> list[str]:
    """A member's restore arguments; none for an account that is no member."""
    pool_id = members.pool_of(row["account_id"])
    if pool_id is None:
        return []
    return member_state(row, periods.get(row["account_id"]), pending.get(pool_id))


async def all_pending(engine: CreditEngine, ledger: Ledger) -> dict[str, PendingEffect]:
    """What the outbox entries that are not in the ledger yet add to each account."""
    out: dict[str, PendingEffect] = {}
    for p in range(engine.config.partitions):
        out.update(await pending_effects(engine, ledger, p))
    return out


async def recover_async(
    engine: CreditEngine,
    ledger: Ledger,
    *,
    force: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> RecoveryTally:
    """Restore every ledger account that Redis lacks, then open every partition."""
    await engine.initialize(allow_fresh=False)  # tier tables and scripts; opens nothing
    tally = RecoveryTally()
    lag = await outbox_lag(engine)
    tally.outbox_entries = lag.total
    if lag.total and not force:
        raise RecoveryRefused(
            f"the outboxes still hold {lag.total} entries the ledger may not have; run "
            "`quotagate flush` first, or `quotagate recover --force` to keep them in Redis"
        )
    pending = await all_pending(engine, ledger) if lag.total else {}
    with postgres_errors():
        async with (
            ledger.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            page: list[asyncpg.Record] = []
            async for row in conn.cursor(f"SELECT {SNAPSHOT_COLUMNS} FROM user_credits"):
                page.append(row)
                if len(page) >= RESTORE_PAGE:
                    await _restore_page(engine, conn, page, pending, tally, on_batch)
                    page = []
            await _restore_page(engine, conn, page, pending, tally, on_batch)
        tally.idempotency_records = await rebuild_idempotency(engine, ledger)
    await engine.mark_ready()
    tally.partitions_opened = engine.config.partitions
    return tally


async def _restore_page(
    engine: CreditEngine,
    conn: asyncpg.Connection,
    page: list[asyncpg.Record],
    pending: dict[str, PendingEffect],
    tally: RecoveryTally,
    on_batch: Callable[[int], None] | None,
) -> None:
    if not page:
        return
    # Read in the snapshot rows' transaction, so grants and balances are of one moment.
    grants = await live_grants(conn, [r["account_id"] for r in page])
    periods = await member_periods(conn, [r["account_id"] for r in page])

    def restore(r: asyncpg.Record) -> Awaitable[bool]:
        a = r["account_id"]
        state = member_state_of(r, periods, pending)
        return restore_row(engine, r, pending.get(a), grants.get(a, ()), state)

    restored = await asyncio.gather(*(restore(r) for r in page))
    tally.ledger_accounts += len(page)
    tally.restored += sum(restored)
    tally.already_present += len(page) - sum(restored)
    if on_batch is not None:
        on_batch(len(page))


IDEMPOTENT_ROWS = """
SELECT t.account_id, t.member_id, t.id, t.amount, t.type, t.resource, t.units, t.description,
       t.refund_of,
       t.metadata::text AS metadata, t.idempotency_key, t.balance_after,
       extract(epoch FROM (now() - t.created_at)) * 1000 AS age_ms, u.overdraft_limit
FROM credit_transactions t JOIN user_credits u USING (account_id)
WHERE t.idempotency_key <> '' AND t.created_at > now() - make_interval(secs => $1)
  AND (t.type IN ('grant', 'earn', 'refund', 'adjust') OR (t.type = 'spend' AND t.resource <> ''))
"""
"""Ledger rows whose idempotency record may still be within its window. A spend without a
resource is the capture of a hold of an amount: its record names the hold, which the ledger
does not keep. (A capture of a resource's hold cannot be told from a consume: its retry meets
a consume's record and is refused as a conflict, never charged again.) A pool's row naming a
member is that member's charge: its record is the member's."""


async def rebuild_idempotency(engine: CreditEngine, ledger: Ledger) -> int:
    """Write the record each script would have written for the ledger's consumes and credits
    whose window has not passed, for the time left of it. Counts the records written."""
    windows_ms = {
        "api": engine.config.idempotency.ttl_seconds * 1000,
        "hook": engine.config.idempotency.hook_ttl_seconds * 1000,
    }
    longest_seconds = max(windows_ms.values()) // 1000
    written = 0
    with postgres_errors():
        async with ledger.pool.acquire() as conn, conn.transaction(readonly=True):
            page: list[tuple[str, str, int]] = []
            async for row in conn.cursor(IDEMPOTENT_ROWS, longest_seconds):
                record = _rebuilt_record(engine, row, windows_ms)
                if record is not None:
                    page.append(record)
                if len(page) >= RESTORE_PAGE:
                    written += await _write_records(engine, page)
                    page = []
            written += await _write_records(engine, page)
    return written


def _rebuilt_record(
    engine: CreditEngine, row: asyncpg.Record, windows_ms: dict[str, int]
) -> tuple[str, str, int] | None:
    """(key, record, milliseconds left) of one ledger row, None when its window has passed."""
    key: str = row["idempotency_key"]
    scope = "hook" if key.startswith(idempotency.HOOK_KEY_PREFIX) else "api"
    left_ms = windows_ms[scope] - int(row["age_ms"])
    if left_ms <= 0:
        return None
    description = row["description"] or ""
    metadata = validate.metadata(json.loads(row["metadata"])) if row["metadata"] else ""
    amount, balance = int(row["amount"]), int(row["balance_after"])
    available = balance + int(row["overdraft_limit"])  # restored accounts hold nothing
    if row["type"] == "spend":
        units = int(row["units"])
        fp = idempotency.consume_fingerprint(row["resource"], units, description, metadata)
        record = idempotency.consume_record(fp, row["id"], -amount, available, balance)
    else:
        refund_of = row["refund_of"] or ""
        fp = idempotency.credit_fingerprint(amount, row["type"], description, metadata, refund_of)
        record = idempotency.credit_record(
            fp, row["id"], balance, available, idempotency.LEDGER_ENTRY_ID
        )
    charged = row["member_id"] or row["account_id"]  # a member's charge the pool paid
    return engine.keys.account(charged, key).idempotency, record, left_ms


async def _write_records(engine: CreditEngine, page: list[tuple[str, str, int]]) -> int:
    """SET NX: a record Redis still holds (a forced recovery) is the first answer; keep it."""
    if not page:
        return 0
    async with engine.redis.pipeline(transaction=False) as pipe:
        for key, record, left_ms in page:
            pipe.set(key, record, px=left_ms, nx=True)
        done = await pipe.execute()
    return sum(1 for d in done if d)


async def ledger_account_count(ledger: Ledger) -> int:
    with postgres_errors():
        async with ledger.pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM user_credits"))


def recover(force: bool = False) -> dict[str, int]:
    """RQ job: the same recovery, for operators who run it through the workers."""
    rt = runtime.current()

    async def work() -> RecoveryTally:
        ledger = await rt.ledger()
        await ledger.ensure_current()
        return await recover_async(await rt.engine(), ledger, force=force)

    return asdict(rt.run(work()))
