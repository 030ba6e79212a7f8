"""The books, per account: what reconciliation measures and the tests check.

The books balance when, for every account::

    Redis balance  = snapshot + effect of the outbox entries not yet in the ledger
    snapshot       = sum of the account's ledger rows

and, for a pool's member whose usage Redis counts in its pool's current period (``pp`` = the
pool's ``rp``)::

    pool usage (pu) = the pool's spends naming it since the pool's last reset, in the ledger
                      and among the outbox entries not yet in it

One reading of some accounts of one partition (:func:`read_books`):

- Redis, atomically: the accounts' balances and the outbox's newest stream id, in one MULTI
  (one slot, so it also runs on a cluster);
- the outbox, up to that id, through an :class:`OutboxIndex` that reads each entry once however
  many readings follow. An entry trimmed before it is read was committed to PostgreSQL first,
  so it is in the snapshot and, like every entry found in ``credit_transactions``, counts as
  flushed;
- PostgreSQL, in one repeatable-read transaction: the snapshots, the sums of the rows, and which
  of the outbox's transactions the ledger already holds.

A flush committing between the Redis and the PostgreSQL readings can make a balanced account
look off for a moment; :mod:`quotagate.jobs.reconcile` reads such an account again before it
calls it drift.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from quotagate.engine import CreditEngine
from quotagate.engine.grants import grant_remainders, stored_balance
from quotagate.ledger import members
from quotagate.ledger.ledger import Ledger, Snapshot
from quotagate.ledger.outbox import RawEntries
from quotagate.ledger.pool_usage import MemberPeriod

OUTBOX_PAGE = 5000
"""Outbox entries read per XRANGE call."""


@dataclass(frozen=True, slots=True)
class PendingEffect:
    """What some outbox transactions not yet in the ledger add up to, for one account."""

    credits: int = 0
    monthly_credits: int = 0
    transactions: int = 0
    grants: tuple[tuple[str, int], ...] = ()
    """What they did to explicit grants: (grant id, credits added or taken), in order."""
    paid_for_members: tuple[tuple[str, int, int], ...] = ()
    """A pool's spends for its members: (member id, credits the pool paid, time in ms)."""

    def __add__(self, other: PendingEffect) -> PendingEffect:
        return PendingEffect(
            self.credits + other.credits,
            self.monthly_credits + other.monthly_credits,
            self.transactions + other.transactions,
            self.grants + other.grants,
            self.paid_for_members + other.paid_for_members,
        )

    @staticmethod
    def of(txn: OutboxTransaction) -> PendingEffect:
        paid: tuple[tuple[str, int, int], ...] = ()
        if txn.member_id is not None:
            paid = ((txn.member_id, -txn.amount, txn.created_ms),)
        return PendingEffect(txn.amount, txn.monthly_delta, 1, txn.grants, paid)

    def paid_for(self, member_id: str, since_ms: int | None) -> int:
        """Credits these pool's spends paid for ``member_id`` from ``since_ms`` on (None:
        all of them)."""
        return sum(
            credits
            for member, credits, created_ms in self.paid_for_members
            if member == member_id and (since_ms is None or created_ms >= since_ms)
        )


@dataclass(frozen=True, slots=True)
class OutboxTransaction:
    """What the books need of one outbox transaction."""

    id: str
    amount: int
    monthly_delta: int
    grants: tuple[tuple[str, int], ...] = ()
    """Its effect on explicit grants: a grant's creation adds to it, a spend's draws, an
    expiry and a void take from it."""
    member_id: str | None = None
    """On a pool's spend: the member it paid for."""
    created_ms: int = 0


@dataclass
class OutboxIndex:
    """The transactions of one partition's outbox, read up to a given stream id, per account."""

    engine: CreditEngine
    partition: int
    read_to: str = ""
    entries: dict[str, list[OutboxTransaction]] = field(default_factory=dict)
    resets_ms: dict[str, int] = field(default_factory=dict)
    """Account -> the newest last reset (``rst``) its account events carry: a renewal the
    ledger may not hold yet opens a pool's new period."""

    async def extend_to(self, last_entry: str) -> None:
        stream = self.engine.keys.outbox(self.partition)
        while last_entry and (not self.read_to or _stream_lt(self.read_to, last_entry)):
            start = f"({self.read_to}" if self.read_to else "-"
            page = cast(
                RawEntries,
                await self.engine.redis.xrange(stream, start, last_entry, count=OUTBOX_PAGE),
            )
            if not page:
                self.read_to = last_entry
                return
            for stream_id, f in page:
                # Leniently: an entry the flush will quarantine still carries its money.
                if f.get("t") != "account" and "amt" in f and "a" in f:
                    txn = OutboxTransaction(
                        f.get("id", ""), int(f["amt"]), int(f.get("dm", 0)), _grant_effects(f),
                        _paid_for(f), int(stream_id.partition("-")[0]),
                    )  # fmt: skip
                    self.entries.setdefault(f["a"], []).append(txn)
                elif f.get("t") == "account" and f.get("rst", "").isdigit() and "a" in f:
                    reset_ms = max(int(f["rst"]), self.resets_ms.get(f["a"], 0))
                    self.resets_ms[f["a"]] = reset_ms
            self.read_to = page[-1][0]

    def of(self, account_id: str) -> list[OutboxTransaction]:
        return self.entries.get(account_id, [])


def _paid_for(f: dict[str, str]) -> str | None:
    """The member a pool's spend paid for, if it names one of the pool's (else the flush
    books the spend without it)."""
    member_id = f.get("pm")
    if f.get("t") != "spend" or not member_id or not members.is_member_of(member_id, f["a"]):
        return None
    return member_id


def _grant_effects(f: dict[str, str]) -> tuple[tuple[str, int], ...]:
    """What an outbox transaction did to explicit grants (leniently, as its money is read)."""
    try:
        if f.get("gd"):
            return tuple(
                (gid, -int(n)) for gid, _, n in (d.rpartition(":") for d in f["gd"].split(","))
            )
        if f.get("gr"):
            return ((f["gr"], int(f["amt"])),)
    except ValueError:
        pass
    return ()


def _stream_lt(a: str, b: str) -> bool:
    ams, aseq = a.split("-")
    bms, bseq = b.split("-")
    return (int(ams), int(aseq)) < (int(bms), int(bseq))


@dataclass(frozen=True, slots=True)
class RedisPoolUsage:
    """A member's usage of its pool as Redis holds it."""

    used: int
    """``pu`` (0 when absent)."""
    period: str
    """``pp``, the pool period ``used`` was counted in ("" when absent)."""
    pool_period: str | None
    """The pool's ``rp``; None when Redis holds no such pool."""


@dataclass(frozen=True, slots=True)
class RedisReading:
    grants: dict[str, dict[str, int]]
    """Account -> explicit grant id -> what is left of it, as the account hash holds them."""
    balances: dict[str, tuple[int, int] | None]
    """Account -> (monthly, the rest: purchased and explicit grants) credits; None when Redis
    has no such account."""
    last_entry: str
    """Stream id of the newest outbox entry when the balances were read ("" if none)."""
    pool_usage: dict[str, RedisPoolUsage] = field(default_factory=dict)
    """Member -> its usage of its pool, for the members among the accounts read."""


async def read_redis(
    engine: CreditEngine, partition: int, account_ids: Sequence[str]
) -> RedisReading:
    """Balances of some accounts of one partition (a member's usage of its pool with its
    pool's period) and the outbox's newest id, atomically: a member is in its pool's
    partition."""
    pools = {a: pool for a in account_ids if (pool := members.pool_of(a)) is not None}
    async with engine.redis.pipeline(transaction=True) as pipe:
        for account_id in account_ids:
            pipe.hmget(engine.keys.account(account_id).account, "m", "b", "g")
        for member_id, pool_id in pools.items():
            pipe.hmget(engine.keys.account(member_id).account, "pu", "pp")
            pipe.hget(engine.keys.account(pool_id).account, "rp")
        pipe.xrevrange(engine.keys.outbox(partition), "+", "-", count=1)
        *replies, newest = await pipe.execute()
    rows, usage_replies = replies[: len(account_ids)], replies[len(account_ids) :]
    pool_usage = {
        member_id: RedisPoolUsage(int(used or 0), period or "", pool_period)
        for member_id, (used, period), pool_period in zip(
            pools, usage_replies[0::2], usage_replies[1::2], strict=True
        )
    }
    balances: dict[str, tuple[int, int] | None] = {
        account_id: None if m is None else (int(m), stored_balance(0, b, g))
        for account_id, (m, b, g) in zip(account_ids, rows, strict=True)
    }
    grants = {
        account_id: grant_remainders(g)
        for account_id, (_, _, g) in zip(account_ids, rows, strict=True)
    }
    return RedisReading(grants, balances, newest[0][0] if newest else "", pool_usage)


@dataclass(frozen=True, slots=True)
class AccountBooks:
    """Both sides of one account at one reading."""

    account_id: str
    redis_credits: int | None
    """None when Redis holds no such account."""
    redis_monthly: int | None
    snapshot: Snapshot | None
    """None when the ledger holds no row for the account yet."""
    pending: PendingEffect
    ledger_credits: int
    """Sum of the account's rows in credit_transactions."""
    redis_grants: dict[str, int] = field(default_factory=dict)
    """Explicit grant id -> what Redis holds left of it."""
    ledger_grants: dict[str, int] = field(default_factory=dict)
    """Explicit grant id -> what ``credit_grants`` holds left of it."""
    pool_usage: PoolUsageBooks | None = None
    """For a pool's member whose usage Redis counts in its pool's current period."""

    def grant_drifts(self) -> list[tuple[str, int, int]]:
        """(grant id, what the ledger and the pending entries leave of it, what Redis holds)
        for each explicit grant where the two differ."""
        expected = dict(self.ledger_grants)
        for gid, change in self.pending.grants:
            expected[gid] = expected.get(gid, 0) + change
        return [
            (gid, expected.get(gid, 0), self.redis_grants.get(gid, 0))
            for gid in sorted(expected.keys() | self.redis_grants.keys())
            if expected.get(gid, 0) != self.redis_grants.get(gid, 0)
        ]

    @property
    def snapshot_credits(self) -> int:
        return self.snapshot.credits if self.snapshot else 0

    @property
    def snapshot_monthly(self) -> int:
        return self.snapshot.monthly_credits if self.snapshot else 0

    @property
    def expected_in_redis(self) -> int:
        """What the ledger says Redis should hold: snapshot plus pending."""
        return self.snapshot_credits + self.pending.credits

    @property
    def drift(self) -> int:
        """Redis balance minus what the ledger explains (0 when the books balance)."""
        return (self.redis_credits or 0) - self.expected_in_redis

    @property
    def monthly_drift(self) -> int:
        return (self.redis_monthly or 0) - (self.snapshot_monthly + self.pending.monthly_credits)

    @property
    def ledger_drift(self) -> int:
        """Snapshot minus the sum of the ledger rows (0 when the books balance)."""
        return self.snapshot_credits - self.ledger_credits

    @property
    def balanced(self) -> bool:
        return self.drift == 0 and self.monthly_drift == 0 and self.ledger_drift == 0


@dataclass(frozen=True, slots=True)
class PoolUsageBooks:
    """Both sides of what a pool paid for one member in the pool's current period."""

    redis_used: int
    ledger_paid: int
    """The pool's spends naming the member in the ledger, since the period began."""
    pending_paid: int
    """The same among the outbox entries not yet in the ledger."""

    @property
    def expected(self) -> int:
        return self.ledger_paid + self.pending_paid

    @property
    def drift(self) -> int:
        return self.redis_used - self.expected


def pool_usage_books(
    member_id: str,
    redis: RedisPoolUsage | None,
    period: MemberPeriod | None,
    pool_pending: Sequence[OutboxTransaction],
    reset_pending_ms: int | None,
) -> PoolUsageBooks | None:
    """The books of a member's usage of its pool; None unless Redis counts it in the pool's
    current period (``pp`` = the pool's ``rp``: otherwise the next charge starts it from 0).

    The period begins at the pool's last reset. A renewal whose event the ledger does not hold
    yet (``reset_pending_ms`` later than the ledger's) began it after every row the ledger has
    (the flush commits in stream order), so only pending spends count then."""
    if redis is None or redis.pool_period is None or redis.period != redis.pool_period:
        return None
    since_ms, ledger_paid = None, 0
    if period is not None:
        since_ms, ledger_paid = period.since_ms, period.paid
    if reset_pending_ms is not None and (since_ms is None or reset_pending_ms > since_ms):
        since_ms, ledger_paid = reset_pending_ms, 0
    pending_paid = sum(
        -txn.amount
        for txn in pool_pending
        if txn.member_id == member_id and (since_ms is None or txn.created_ms >= since_ms)
    )
    return PoolUsageBooks(redis.used, ledger_paid, pending_paid)


async def read_books(
    engine: CreditEngine,
    ledger: Ledger,
    partition: int,
    account_ids: Sequence[str],
    index: OutboxIndex,
) -> dict[str, AccountBooks]:
    """One reading of both sides of some accounts of one partition."""
    reading = await read_redis(engine, partition, account_ids)
    await index.extend_to(reading.last_entry)
    candidates = [txn.id for a in account_ids for txn in index.of(a)]
    pools = {a: pool for a in account_ids if (pool := members.pool_of(a)) is not None}
    candidates += [txn.id for pool in set(pools.values()) for txn in index.of(pool)]
    snaps, sums, flushed, grants, periods = await ledger.read_books(account_ids, candidates)
    out = {}
    for account_id in account_ids:
        usage = None
        if (pool_id := pools.get(account_id)) is not None:
            usage = pool_usage_books(
                account_id, reading.pool_usage.get(account_id), periods.get(account_id),
                [txn for txn in index.of(pool_id) if txn.id not in flushed],
                index.resets_ms.get(pool_id),
            )  # fmt: skip
        pending = PendingEffect()
        for txn in index.of(account_id):
            if txn.id not in flushed:
                pending += PendingEffect.of(txn)
        balance = reading.balances[account_id]
        out[account_id] = AccountBooks(
            account_id=account_id,
            redis_credits=None if balance is None else balance[0] + balance[1],
            redis_monthly=None if balance is None else balance[0],
            snapshot=snaps.get(account_id),
            pending=pending,
            ledger_credits=int(sums.get(account_id, 0)),
            redis_grants=reading.grants[account_id],
            ledger_grants=grants.get(account_id, {}),
            pool_usage=usage,
        )
    return out


async def account_books(
    engine: CreditEngine, ledger: Ledger, account_ids: Sequence[str]
) -> list[AccountBooks]:
    """The books of each account, in the order given (one reading per partition)."""
    by_partition: dict[int, list[str]] = defaultdict(list)
    for account_id in dict.fromkeys(account_ids):
        by_partition[engine.keys.partition_of(account_id)].append(account_id)
    found: dict[str, AccountBooks] = {}
    for partition, accounts in sorted(by_partition.items()):
        index = OutboxIndex(engine, partition)
        found.update(await read_books(engine, ledger, partition, accounts, index))
    return [found[a] for a in dict.fromkeys(account_ids)]


async def pending_effects(
    engine: CreditEngine, ledger: Ledger, partition: int
) -> dict[str, PendingEffect]:
    """Per account of ``partition``: the effect of its outbox transactions not in the ledger
    (written-through entries, and entries of a flush that died before trimming, are in it)."""
    index = OutboxIndex(engine, partition)
    newest = cast(
        list[tuple[str, object]],
        await engine.redis.xrevrange(engine.keys.outbox(partition), "+", "-", count=1),
    )
    await index.extend_to(newest[0][0] if newest else "")
    present = await ledger.present_ids([t.id for txns in index.entries.values() for t in txns])
    out: dict[str, PendingEffect] = {}
    for account_id, txns in index.entries.items():
        effect = PendingEffect()
        for txn in txns:
            if txn.id not in present:
                effect += PendingEffect.of(txn)
        if effect.transactions:
            out[account_id] = effect
    return out
