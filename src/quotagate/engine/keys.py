"""Every Redis key quotagate writes, its prefix and its lifetime, in one place.

On the credit Redis (``P`` is the key prefix, ``{n}`` the partition's hash tag):

    P:meta                 hash   partitions count, written on first start; guards against a
                                  restart with another count (accounts would move partition).
                                  Kept for good
    P:{n}:cfg              hash   per-partition copy of the tier table and the ``ready`` flag.
                                  A copy per partition keeps every script inside one slot;
                                  a missing ``ready`` means Redis lost data (recovery pending).
                                  Rewritten at each start, kept for good
    P:{n}:outbox           stream every balance change of the partition, until flushed: the
                                  flush trims the entries PostgreSQL committed
    P:{n}:shadow           stream the decisions of routes and tiers in shadow mode, until
                                  flushed to ``shadow_charges``: the flush trims what it wrote
    P:{n}:holdexp          zset   accounts of the partition with open holds, scored by the
                                  earliest expiry: the expiry sweep reads it. An account
                                  leaves it with its last hold
    P:{n}:grantexp         zset   accounts of the partition with an explicit grant that expires,
                                  scored by the earliest expiry: the grant sweep reads it. A
                                  score may be early (the grant was spent first): the sweep
                                  then finds nothing due and scores the account again
    P:{n}:accounts         set    every account id of the partition: jobs walk a partition with
                                  SSCAN here instead of a SCAN of the whole keyspace. Kept for
                                  good, as the accounts are
    P:{n}:renewed          string the period whose renewal pass over the partition completed:
                                  the daily renewal job skips a renewed partition with one GET.
                                  Overwritten each month
    P:{n}:flushlease       string who flushes partition n (a random token): at most one flush
                                  per partition. Expires after the lease length unless renewed,
                                  so a dead worker's lease goes by itself; released at the end
    P:{n}:a:<acct>         hash   the account: buckets, reserved, tier, status, overdraft,
                                  grants; for a pool's member (``<pool>~<name>``, in its
                                  pool's partition) its limit and use in the pool's period.
                                  Kept for good
    P:{n}:h:<acct>         hash   the account's open holds: hold id -> "amount|expires_ms|..".
                                  Goes with the last hold (captured, released or expired)
    P:{n}:hz:<acct>        zset   the account's hold ids scored by expiry (lazy expiry); goes
                                  with the last hold
    P:{n}:hs:<acct>:<hold> string a reservation was settled: a second settle of it is told so
                                  (409) rather than "no such hold". Expires after the hook's
                                  idempotency window (``hook_ttl_seconds``): settles follow
                                  their hook call within it, and every settle leaves one
    P:{n}:rl:<acct>        string GCRA theoretical arrival time, expires when idle
    P:{n}:ss:<acct>        string credits the account's shadow charges took (its shadow
                                  balance is its available credits less this). Kept until
                                  ``quotagate shadow reset``
    P:{n}:srl:<acct>       string the shadow charges' own GCRA state, expires when idle
    P:{n}:ik:<len>:<acct>:<key>
                           string idempotency record: the request's fingerprint and what a
                                  replay answers. ``<len>`` is the account id's length, so no
                                  account and key pair can name another pair's record (both may
                                  hold ``:``). Expires after the idempotency TTL (the hook's
                                  own, shorter window for hook charges)
    P:{n}:rf:<acct>:<txn>  hash   a spend's refund count: ``cost`` (what the spend charged) and
                                  ``refunded`` (what its refunds returned so far). Created by
                                  the first refund of the spend from the ledger's count, kept
                                  by each refund in the same script as its credit, so concurrent
                                  refunds never pass the cost; expires when the spend has not
                                  been refunded for REFUND_COUNT_TTL_SECONDS (the next refund
                                  counts again from the ledger and the outbox)
    P:apikeys              hash   the gateway's copy of the API key hashes (PostgreSQL holds the
                                  keys; the copy lets a gateway start while PostgreSQL is down).
                                  No TTL: it is the fallback; rewritten at every change

All keys one script touches share ``{n}``, so every script runs unchanged on Redis Cluster.

On the queue Redis (``QUOTAGATE_QUEUE_URL``, by default the same server; RQ does not run on
Redis Cluster, so these carry no hash tag):

    P:flush, P:jobs        RQ queue names (RQ keeps them as ``rq:queue:P:flush`` and so on):
                           flushes and expiry sweeps, everything else. Queue names carry the
                           prefix so deployments sharing a Redis never take each other's jobs
    P:flushq:<n>    string a flush of partition n is queued, or backing off after a failure:
                           do not enqueue another. Set NX with a TTL, so a crashed worker's
                           flag goes away on its own; the flush job deletes it when it starts
    P:flushfail:<n> string consecutive failed flushes of partition n (the backoff's exponent);
                           deleted by the next flush that succeeds
    P:flush, P:expire-holds, P:renewal, P:reconciliation
                           the scheduler's recurring job names (``rq cron`` keeps the ids of
                           the jobs each spawned under ``rq:cron_job:<name>:jobs``, with RQ's
                           own length and TTL)
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

DEFAULT_PREFIX = "qg"
"""Prefix of every key; lets several deployments (or test runs) share one Redis."""

REFUND_COUNT_TTL_SECONDS = 7 * 86400
"""How long a spend's refund count outlives its last refund. Only a cache of what the ledger
and the outbox hold (both are read again when it is gone), so any length is correct; a week
keeps the refunds of one order, which come in a burst, from reading PostgreSQL each time."""

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def partition_of(account_id: str, partitions: int) -> int:
    """The partition an account lives in. The only place this is decided.

    CRC32 is stable across processes and Python versions (``hash()`` is not). A member of a
    pool (``<pool>~<name>``) lives in its pool's partition: the part before ``~`` is hashed,
    so one script can charge both, also on Redis Cluster.
    """
    return zlib.crc32(account_id.partition("~")[0].encode()) % partitions


@dataclass(frozen=True, slots=True)
class AccountKeys:
    """The keys of one account, in the order every account script takes them as KEYS."""

    account: str
    cfg: str
    outbox: str
    idempotency: str
    holds: str
    hold_expiry: str
    partition_hold_expiry: str
    rate: str
    index: str

    def as_list(self) -> list[str]:
        return [
            self.account,
            self.cfg,
            self.outbox,
            self.idempotency,
            self.holds,
            self.hold_expiry,
            self.partition_hold_expiry,
            self.rate,
            self.index,
        ]


MAX_REMEMBERED_ACCOUNTS = 10_000
"""Accounts whose key names a KeySpace keeps (about 1 KB each); past this it starts over.
Small on purpose: the collector walks what is kept, and a miss costs under a microsecond."""


class KeySpace:
    """Builds key names for one prefix and partition count."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, partitions: int = 64) -> None:
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"key prefix {prefix!r} must be 1-64 chars of A-Z a-z 0-9 _ . : -")
        self.prefix = prefix
        self.partitions = partitions
        self._script_keys: dict[str, tuple[str, ...]] = {}
        self._partition_names = [
            (self.tag(p), self.cfg(p), self.outbox(p), self.partition_hold_expiry(p),
             self.accounts(p))
            for p in range(partitions)
        ]  # fmt: skip

    def script_keys(self, account_id: str, idempotency_key: str | None = None) -> tuple[str, ...]:
        """The keys of an account in the order of :class:`AccountKeys`, the one place they are
        built. The partition's names are made once, and those of recent accounts are
        remembered (charges come again and again from the same accounts). Tuples of strings
        are untracked by the garbage collector, which would otherwise walk every remembered
        entry."""
        keys = self._script_keys.get(account_id)
        if keys is None:
            if len(self._script_keys) >= MAX_REMEMBERED_ACCOUNTS:
                self._script_keys.clear()
            p = partition_of(account_id, self.partitions)
            t, cfg, outbox, holdexp, index = self._partition_names[p]
            keys = self._script_keys[account_id] = (
                f"{t}:a:{account_id}", cfg, outbox, _idempotency_stem(t, account_id),
                f"{t}:h:{account_id}",
                f"{t}:hz:{account_id}", holdexp, f"{t}:rl:{account_id}", index,
            )  # fmt: skip
        if not idempotency_key:
            return keys
        return (*keys[:3], keys[3] + idempotency_key, *keys[4:])

    def member_keys(self, account_id: str) -> tuple[str, ...]:
        """What the scripts that charge take after an account's keys when it is a member of a
        pool: KEYS[10], the partition's grant-expiry index (a name of the slot, unused by
        them), and KEYS[11], the pool's account hash. Nothing for other accounts."""
        pool, sep, _ = account_id.partition("~")
        if not sep:
            return ()
        p = partition_of(account_id, self.partitions)
        return (self.grant_expiry(p), f"{self.tag(p)}:a:{pool}")

    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    def tag(self, partition: int) -> str:
        return f"{self.prefix}:{{{partition}}}"

    def cfg(self, partition: int) -> str:
        return f"{self.tag(partition)}:cfg"

    def outbox(self, partition: int) -> str:
        return f"{self.tag(partition)}:outbox"

    def shadow(self, partition: int) -> str:
        """The partition's shadow stream: decisions of routes and tiers in shadow mode."""
        return f"{self.tag(partition)}:shadow"

    def shadow_keys(self, account_id: str) -> tuple[str, ...]:
        """The KEYS of ``shadow.lua`` for an account (the account layout: the slots it does
        not use carry the account's own names, so that every key is in its slot)."""
        k = self.script_keys(account_id)
        tag = self.tag(self.partition_of(account_id))
        keys = (
            k[0], k[1], self.shadow(self.partition_of(account_id)), f"{tag}:ss:{account_id}",
            k[4], k[5], k[6], f"{tag}:srl:{account_id}",
        )  # fmt: skip
        member = self.member_keys(account_id)
        # A member's: KEYS[9] its partition's account index, then KEYS[10..11] as for consume.
        return (*keys, k[8], *member) if member else keys

    @property
    def shadow_spend_pattern(self) -> str:
        """SCAN pattern matching the shadow spend counters of every partition."""
        return f"{self.prefix}:{{*}}:ss:*"

    def partition_hold_expiry(self, partition: int) -> str:
        return f"{self.tag(partition)}:holdexp"

    def grant_expiry(self, partition: int) -> str:
        return f"{self.tag(partition)}:grantexp"

    def accounts(self, partition: int) -> str:
        return f"{self.tag(partition)}:accounts"

    def renewed(self, partition: int) -> str:
        return f"{self.tag(partition)}:renewed"

    def flush_lease(self, partition: int) -> str:
        return f"{self.tag(partition)}:flushlease"

    @property
    def api_keys(self) -> str:
        return f"{self.prefix}:apikeys"

    def partition_of(self, account_id: str) -> int:
        return partition_of(account_id, self.partitions)

    def account(self, account_id: str, idempotency_key: str | None = None) -> AccountKeys:
        """All keys of an account, by name. Without an idempotency key the slot is still
        filled (scripts take a fixed KEYS list) with a name the script never touches."""
        return AccountKeys(*self.script_keys(account_id, idempotency_key))

    def refund_count(self, account_id: str, spend_id: str = "") -> str:
        """The refund count of one spend of the account. Without a spend the name is one no
        script touches: the credit script takes this slot for every credit."""
        return f"{self.tag(self.partition_of(account_id))}:rf:{account_id}:{spend_id}"

    def settled_hold(self, account_id: str, hold_id: str) -> str:
        """The mark that the account's hold ``hold_id`` (a UUID) was settled."""
        return f"{self.tag(self.partition_of(account_id))}:hs:{account_id}:{hold_id}"

    def account_pattern(self, partition: int) -> str:
        """SCAN pattern matching the account hashes of one partition."""
        return f"{self.tag(partition)}:a:*"

    def account_id_from_key(self, key: str) -> str:
        """The account id in an account hash's key name. The prefix may itself hold ``:a:``,
        but never a brace: the account id starts after the first ``}:a:``."""
        head = f"{self.prefix}:{{"
        tag_end = key.find("}:a:", len(head)) if key.startswith(head) else -1
        if tag_end < 0:
            raise ValueError(f"{key!r} is not an account key under the prefix {self.prefix!r}")
        return key[tag_end + len("}:a:") :]


def all_keys_pattern(prefix: str) -> str:
    """SCAN pattern matching every key of the credit Redis under ``prefix`` (RQ's own keys
    start with ``rq:`` instead)."""
    return f"{prefix}:*"


def queue_name(prefix: str, kind: str) -> str:
    """An RQ queue's name (``kind`` is ``flush`` or ``jobs``), on the queue Redis."""
    return f"{prefix}:{kind}"


def flush_queued_flag(prefix: str, partition: int) -> str:
    """The flag that a flush of ``partition`` is queued or backing off, on the queue Redis."""
    return f"{prefix}:flushq:{partition}"


def flush_failures(prefix: str, partition: int) -> str:
    """The count of consecutive failed flushes of ``partition``, on the queue Redis."""
    return f"{prefix}:flushfail:{partition}"


def cron_job_name(prefix: str, job: str) -> str:
    """The name the scheduler registers a recurring job under (``flush``, ``renewal``...)."""
    return f"{prefix}:{job}"


def _idempotency_stem(tag: str, account_id: str) -> str:
    """The idempotency record key of ``account_id`` without the idempotency key itself. The
    account id's length comes first, so where the account id ends and the key begins is never
    in doubt (account ids and keys may both hold ``:``)."""
    return f"{tag}:ik:{len(account_id)}:{account_id}:"
