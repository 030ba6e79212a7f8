"""The books, per account, for reconciliation and for tests.

    Redis balance  = snapshot + effect of the outbox entries not yet in the ledger
    snapshot       = sum of the account's ledger rows

:func:`pending_effects` gives the second term for a partition (entries whose transaction id
the ledger already holds are not pending: they were written through, or flushed by a worker
that died before deleting them). :func:`account_books` reads all the terms for some
accounts. Redis is read in one MULTI (balances and outbox together), then PostgreSQL in one
repeatable-read snapshot, so a flush committing between the two reads moves an entry from
"pending" to "snapshot" consistently. One race remains on a live system: an entry appended
after the Redis read and flushed (or written through) before the PostgreSQL read shows as
drift; hold the partition's flush lease (``FlushLease``) and check again before repairing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from quotagate.engine import CreditEngine
from quotagate.ledger.ledger import Ledger, Snapshot
from quotagate.ledger.outbox import RawEntries, TransactionEntry, parse_entries, read_all


@dataclass(frozen=True, slots=True)
class Effect:
    """What some transactions add up to, for one account."""

    credits: int = 0
    monthly_credits: int = 0
    transactions: int = 0

    def __add__(self, other: Effect) -> Effect:
        return Effect(
            self.credits + other.credits,
            self.monthly_credits + other.monthly_credits,
            self.transactions + other.transactions,
        )


def effects(entries: Iterable[TransactionEntry]) -> dict[str, Effect]:
    """Per account: the sum of the entries' balance changes."""
    out: dict[str, Effect] = defaultdict(Effect)
    for e in entries:
        out[e.account_id] += Effect(e.amount, e.monthly_delta, 1)
    return dict(out)


def _transactions(entries: Iterable[object]) -> list[TransactionEntry]:
    return [e for e in entries if isinstance(e, TransactionEntry)]


async def pending_effects(
    engine: CreditEngine, ledger: Ledger, partition: int
) -> dict[str, Effect]:
    """Per account of ``partition``: the effect of its outbox transactions not in the ledger."""
    waiting = _transactions(await read_all(engine, partition))
    present = await ledger.present_ids([e.id for e in waiting])
    return effects(e for e in waiting if e.id not in present)


@dataclass(frozen=True, slots=True)
class AccountBooks:
    account_id: str
    redis_credits: int | None
    """None when Redis holds no such account."""
    redis_monthly: int | None
    snapshot: Snapshot | None
    """None when the ledger holds no row for the account yet."""
    pending: Effect
    ledger_credits: int
    """Sum of the account's rows in credit_transactions."""

    @property
    def snapshot_credits(self) -> int:
        return self.snapshot.credits if self.snapshot else 0

    @property
    def snapshot_monthly(self) -> int:
        return self.snapshot.monthly_credits if self.snapshot else 0

    @property
    def drift(self) -> int:
        """Redis balance minus what the ledger explains (0 when the books balance)."""
        return (self.redis_credits or 0) - (self.snapshot_credits + self.pending.credits)

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


async def _redis_side(
    engine: CreditEngine, partition: int, account_ids: Sequence[str]
) -> tuple[list[TransactionEntry], list[Any]]:
    async with engine.redis.pipeline(transaction=True) as pipe:
        pipe.xrange(engine.keys.outbox(partition), "-", "+")
        for account_id in account_ids:
            pipe.hmget(engine.keys.account(account_id).account, ["m", "b"])
        replies: list[Any] = await pipe.execute()
    waiting = _transactions(parse_entries(cast(RawEntries, replies[0])))
    return waiting, replies[1:]


async def account_books(
    engine: CreditEngine, ledger: Ledger, account_ids: Sequence[str]
) -> list[AccountBooks]:
    """The books of each account (reads its partition's whole outbox once per partition)."""
    by_partition: dict[int, list[str]] = defaultdict(list)
    for account_id in dict.fromkeys(account_ids):
        by_partition[engine.keys.partition_of(account_id)].append(account_id)
    out: list[AccountBooks] = []
    for partition, accounts in sorted(by_partition.items()):
        waiting, balances = await _redis_side(engine, partition, accounts)
        snaps, sums, present = await ledger.read_books(accounts, [e.id for e in waiting])
        pending = effects(e for e in waiting if e.id not in present)
        for account_id, (m, b) in zip(accounts, balances, strict=True):
            out.append(
                AccountBooks(
                    account_id=account_id,
                    redis_credits=int(m) + int(b) if m is not None else None,
                    redis_monthly=int(m) if m is not None else None,
                    snapshot=snaps.get(account_id),
                    pending=pending.get(account_id, Effect()),
                    ledger_credits=sums.get(account_id, 0),
                )
            )
    return out
