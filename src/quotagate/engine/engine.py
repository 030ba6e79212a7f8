"""The credit engine: one method per atomic operation, each one script run in Redis.

This is the public library API. The HTTP gateway, the CLI and the jobs all go through it, and a
Python service may embed it directly::

    engine = CreditEngine.from_url("redis://localhost:6379/0", load_config())
    await engine.initialize()
    await engine.upsert_account("alice", tier="pro")
    result = await engine.consume("alice", "ai_chat_message", idempotency_key="req-1")

Every method checks its input first (a bad one raises a ValidationError and writes nothing),
then makes exactly one script call; calls made in the same loop tick share one pipeline.
``consume_many`` is many consumes at once: one outcome per charge, each as ``consume`` alone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot

from quotagate import ids
from quotagate.config import MAX_BALANCE, Config
from quotagate.engine import idempotency, validate
from quotagate.engine.batching import ScriptRunner
from quotagate.engine.charge_list import Charge, InFlight, rounds
from quotagate.engine.connection import is_cluster
from quotagate.engine.connection import redis_from_url as redis_from_url
from quotagate.engine.futures import or_else_on
from quotagate.engine.grants import account_grants, period_end
from quotagate.engine.keys import (
    DEFAULT_PREFIX,
    REFUND_COUNT_TTL_SECONDS,
    AccountKeys,
    KeySpace,
)
from quotagate.engine.memory import refuse_evicting_redis
from quotagate.engine.replies import redis_failures, unwrap
from quotagate.engine.restored_grants import grants_field
from quotagate.engine.results import (
    Account,
    ChargeResult,
    CheckResult,
    CreditResult,
    Grant,
    GrantResult,
    Hold,
    HoldResult,
    Membership,
    PoolPayment,
    RateLimitState,
    RefundCount,
    ReleaseResult,
    RenewResult,
    SettleResult,
    ShadowDecision,
    UpsertResult,
    VoidResult,
)
from quotagate.engine.routing import ClusterScriptRunner
from quotagate.engine.scripts import Script, load_scripts
from quotagate.engine.validate import KEEP, Keep
from quotagate.errors import (
    AccountNotFound,
    AccountNotLoaded,
    ConfigError,
    QuotagateError,
    ShadowTier,
    UnknownTier,
    ValidationError,
)

ChargeOutcome = ChargeResult | QuotagateError
"""What one charge of a list came to: charged (or replayed), or the error it raised."""


def _charge_result(reply: list[str]) -> ChargeResult:
    r = unwrap(reply)
    burst = int(r[5])  # consume.lua answers its numbers as integers, a replay as text
    rate = RateLimitState(burst, int(r[6]), int(r[7])) if burst >= 0 else None
    return ChargeResult(r[0], int(r[1]), int(r[2]), int(r[3]), r[4] == "1", rate)


def _member_charge_result(pool_id: str, reply: list[str]) -> ChargeResult:
    """A member's charge: consume.lua adds what the pool paid, unless it replays."""
    r = unwrap(reply)
    burst = int(r[5])
    rate = RateLimitState(burst, int(r[6]), int(r[7])) if burst >= 0 else None
    pool = None
    if len(r) > 8:
        pool = PoolPayment(pool_id, int(r[8]), int(r[9]), None if r[10] == "-1" else int(r[10]))
    return ChargeResult(r[0], int(r[1]), int(r[2]), int(r[3]), r[4] == "1", rate, pool=pool)


def _shadow_result(reply: list[str]) -> ChargeResult:
    r = unwrap(reply)
    decision = cast(ShadowDecision, r[1])  # shadow.lua answers one of them
    return ChargeResult(r[0], int(r[2]), int(r[3]), int(r[4]), False, shadow=decision)


def _spend_id(type: str, refund_of: str | None) -> str:
    """The spend a credit refunds, as the canonical text of its id ("" for other types)."""
    if type != "refund":
        if refund_of is not None:
            raise ValidationError("only a refund names a spend (refund_of)", field="refund_of")
        return ""
    if refund_of is None:
        raise ValidationError(
            "a refund names the spend it returns: refund_of, the spend's transaction id",
            field="refund_of",
        )
    try:
        return str(uuid.UUID(refund_of))
    except (TypeError, ValueError, AttributeError):
        raise ValidationError("refund_of must be a transaction id", field="refund_of") from None


def current_period(now: datetime | None = None) -> str:
    """The renewal period (calendar month, UTC) as "YYYY-MM"."""
    return (now or datetime.now(UTC)).strftime("%Y-%m")


def _ms_to_dt(ms: str | int) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


class CreditEngine:
    """Atomic credit operations over one Redis or a Redis Cluster (``redis`` is then redis-py's
    ``RedisCluster``: script calls go to each partition's master, see quotagate.engine.routing)."""

    def __init__(
        self,
        redis: Redis,
        config: Config,
        *,
        prefix: str = DEFAULT_PREFIX,
        batching: bool = True,
    ) -> None:
        self.redis = redis
        self.config = config
        self.keys = KeySpace(prefix, config.partitions)
        self.scripts: dict[str, Script] = load_scripts()
        self.runner: ScriptRunner | ClusterScriptRunner = (
            ClusterScriptRunner(cast(RedisCluster, redis), batching=batching)
            if is_cluster(redis)
            else ScriptRunner(redis, batching=batching)
        )
        self._consume = self.scripts["consume"]
        self._shadow = self.scripts["shadow"]
        self._shadow_resources = frozenset(config.shadow.resources)
        self._shadow_tiers = frozenset(n for n, tier in config.tiers.items() if tier.shadow)
        self._lists_in_flight = InFlight()
        self._idem_ttl_ms = str(config.idempotency.ttl_seconds * 1000)
        self._refund_count_ttl_ms = str(REFUND_COUNT_TTL_SECONDS * 1000)
        self._idem_ttl_ms_by_scope = {
            "api": self._idem_ttl_ms,
            "hook": str(config.idempotency.hook_ttl_seconds * 1000),
        }

    @classmethod
    def from_url(cls, url: str, config: Config, **kwargs: Any) -> CreditEngine:
        return cls(redis_from_url(url), config, **kwargs)

    async def aclose(self) -> None:
        await self.runner.aclose()
        await self.redis.aclose()

    # -- start-up ---------------------------------------------------------------------------

    async def initialize(self, *, allow_fresh: bool = True) -> str:
        """Refuse a Redis that may evict keys, check the partition count, copy the tier table
        into every partition, load scripts.

        Returns "ready", "fresh" (an empty Redis, now initialised) or "needs_recovery" (an
        empty Redis while ``allow_fresh`` is False, because the ledger holds accounts: charges
        are refused with AccountNotLoaded until recovery marks the partitions ready).
        """
        await refuse_evicting_redis(self.redis)
        meta = cast(dict[str, str], await self.redis.hgetall(self.keys.meta))
        if meta and int(meta.get("partitions", "0")) != self.config.partitions:
            raise ConfigError(
                f"config: partitions = {self.config.partitions}, but this Redis holds data "
                f"laid out in {meta.get('partitions')} partitions; use that number"
            )
        await self._sync_tiers()
        await self.runner.load(list(self.scripts.values()))
        if not meta and allow_fresh:
            await self.mark_ready()
            return "fresh"
        if not meta:
            return "needs_recovery"
        return "ready" if await self.is_ready() else "needs_recovery"

    async def _sync_tiers(self) -> None:
        fields: dict[Any, Any] = {}
        for name, tier in self.config.tiers.items():
            rl = tier.rate_limit
            terms = f"{rl.interval_us} {rl.burst}" if rl else "0 0"
            fields[f"t:{name}"] = f"{terms} shadow" if tier.shadow else terms
            fields[f"r:{name}"] = f"{tier.renewal} {tier.monthly_grant} {tier.credit_limit}"
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in range(self.config.partitions):
                pipe.hset(self.keys.cfg(p), mapping=fields)
            await pipe.execute()
        names = cast(list[str], await self.redis.hkeys(self.keys.cfg(0)))
        stale = [f for f in names if f.startswith(("t:", "r:"))]
        stale = [f for f in stale if f not in fields]
        if stale:
            async with self.redis.pipeline(transaction=False) as pipe:
                for p in range(self.config.partitions):
                    pipe.hdel(self.keys.cfg(p), *stale)
                await pipe.execute()

    async def mark_ready(self) -> None:
        """Record the partition count and open every partition for traffic.

        Not a MULTI: the partitions live in different slots, which a cluster would refuse.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.meta, mapping={"partitions": self.config.partitions})
            for p in range(self.config.partitions):
                pipe.hset(self.keys.cfg(p), "ready", "1")
            await pipe.execute()

    async def is_ready(self) -> bool:
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in range(self.config.partitions):
                pipe.hget(self.keys.cfg(p), "ready")
            flags = await pipe.execute()
        return all(f == "1" for f in flags)

    # -- operations -------------------------------------------------------------------------

    async def _call(
        self, name: str, account_id: str, idem: str | None, args: Sequence[str]
    ) -> list[str]:
        keys = self.keys.script_keys(account_id, idem)
        return unwrap(await self.runner.run(self.scripts[name], keys, args))

    async def upsert_account(
        self,
        account_id: str,
        *,
        tier: str | None = None,
        status: str | None = None,
        overdraft_limit: int | None = None,
        member_limit: int | Keep | None = KEEP,
        own_credits_first: bool | None = None,
        idempotency_key: str | None = None,
    ) -> UpsertResult:
        """Create the account (active, default tier, opening grant), or change what is given.

        For a member of a pool (``<pool>~<name>``, see docs/pools.md), ``member_limit`` is the
        most its pool pays for it per period of the pool (None: no limit; left out: as it was,
        none for a new member) and ``own_credits_first`` whether its own credits go first."""
        ids.check_account_id(account_id)
        member = ids.pool_of(account_id) is not None
        if not member and (member_limit is not KEEP or own_credits_first is not None):
            field = "member_limit" if member_limit is not KEEP else "own_credits_first"
            raise ValidationError(
                f"{field} is a setting of a pool's member (an account <pool>~<name>)", field=field
            )
        if member_limit is not KEEP and member_limit is not None:
            validate.limit(member_limit, "member_limit")
        idem = ids.check_idempotency_key(idempotency_key)
        if tier is not None and tier not in self.config.tiers:
            raise UnknownTier(f"unknown tier {tier!r}", field="tier")
        if status is not None and status not in ("active", "banned"):
            raise ValidationError('status must be "active" or "banned"', field="status")
        if overdraft_limit is not None:
            validate.limit(overdraft_limit, "overdraft_limit")
        grant_tier = self.config.tiers[tier or self.config.default_tier]
        grant = grant_tier.monthly_grant if self.config.opening_grant else 0
        limit_arg = (
            "" if member_limit is KEEP else "none" if member_limit is None else str(member_limit)
        )
        first_arg = "" if own_credits_first is None else "1" if own_credits_first else "0"
        fp = validate.fingerprint("account", tier, status, overdraft_limit)
        if member:
            fp = validate.fingerprint(
                "account", tier, status, overdraft_limit, limit_arg, first_arg
            )
        args = [
            account_id, tier or "", status or "",
            "" if overdraft_limit is None else str(overdraft_limit),
            ids.new_id(), str(grant), ids.new_id(), current_period(),
            idem or "", fp, self._idem_ttl_ms, self.config.default_tier, limit_arg, first_arg,
        ]  # fmt: skip
        keys = (*self.keys.script_keys(account_id, idem), *self.keys.member_keys(account_id))
        r = unwrap(await self.runner.run(self.scripts["upsert_account"], keys, args))
        entries = tuple(r[7].split(","))
        return UpsertResult(
            account_id,
            r[0] == "1",
            r[1],
            r[2],
            int(r[3]),
            int(r[4]),
            int(r[5]),
            r[6] == "1",
            entries,
        )

    async def check(self, account_id: str, resource: str, units: int = 1) -> CheckResult:
        """Would a charge be allowed now? Reads only."""
        ids.check_account_id(account_id)
        total = validate.cost(self.config, resource, units)
        keys = (*self.keys.script_keys(account_id), *self.keys.member_keys(account_id))
        r = unwrap(await self.runner.run(self.scripts["check"], keys, [str(total), account_id]))
        return CheckResult(r[0] == "1", int(r[1]), int(r[2]))

    async def consume(
        self,
        account_id: str,
        resource: str,
        units: int = 1,
        *,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> ChargeResult:
        """Charge ``units`` of ``resource``: checked, rate-limited and decremented atomically."""
        return await self.consume_soon(
            account_id, resource, units, description=description, metadata=metadata,
            idempotency_key=idempotency_key,
        )  # fmt: skip

    def consume_soon(
        self,
        account_id: str,
        resource: str,
        units: int = 1,
        *,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        idempotency_scope: idempotency.Scope = "api",
        shadow: bool = False,
    ) -> asyncio.Future[ChargeResult]:
        """:meth:`consume` as a future, for a caller that answers from its done-callback (the
        reverse-proxy hook) rather than awaiting it in a task. Bad input raises here, at once;
        cancelling the future before the call is sent keeps it from being sent. Must be called
        with the event loop running.

        ``idempotency_scope="hook"`` remembers the key for the hook's own, shorter window
        (``hook_ttl_seconds``), apart from the API's keys (see :mod:`.idempotency`).

        With ``shadow`` (a hook route in shadow mode), or for a resource of the config's
        ``shadow.resources``, the charge is a shadow charge (:meth:`shadow_soon`): decided,
        recorded, not charged; its idempotency key and metadata are checked, then unused."""
        ids.check_account_id(account_id)
        total = validate.cost(self.config, resource, units)
        desc = validate.description(description)
        meta = validate.metadata(metadata)
        idem = ids.check_idempotency_key(idempotency_key)
        if shadow or resource in self._shadow_resources:
            return self._shadow_call(account_id, resource, units, total, desc)
        ttl_ms = self._idem_ttl_ms_by_scope[idempotency_scope]
        fp = ""
        if idem:
            fp = idempotency.consume_fingerprint(resource, units, desc, meta)
            idem = idempotency.scoped_key(idem, idempotency_scope)
        args = [
            ids.new_id(), account_id, str(total), resource, str(units), desc, meta,
            idem or "", fp, ttl_ms,
        ]  # fmt: skip
        keys = self.keys.script_keys(account_id, idem)
        parse: Callable[[list[str]], ChargeResult] = _charge_result
        if "~" in account_id:  # a member of a pool: the script charges the pool too
            keys = (*keys, *self.keys.member_keys(account_id))
            parse = partial(_member_charge_result, account_id.partition("~")[0])
        # Charges of one account that meet in a batch go as one script call; one with an
        # idempotency key goes alone (its record is a key of its own).
        combine = None if idem else account_id
        charged = self.runner.submit(self._consume, keys, args, parse, combine=combine)
        if not self._shadow_tiers:
            return charged
        # Only the script knows the account's tier: on a tier in shadow mode it does nothing
        # and says so, and the charge goes to shadow.lua.
        return or_else_on(
            ShadowTier,
            charged,
            partial(self._shadow_call, account_id, resource, units, total, desc),
        )

    def shadow_soon(
        self,
        account_id: str,
        resource: str,
        units: int = 1,
        *,
        description: str | None = None,
    ) -> asyncio.Future[ChargeResult]:
        """What :meth:`consume` would do, against the account's shadow balance, recorded in
        the partition's shadow stream; nothing is charged (``lua/shadow.lua``). The result's
        ``shadow`` is the decision. Bad input raises here, at once, as it would for a charge."""
        ids.check_account_id(account_id)
        total = validate.cost(self.config, resource, units)
        return self._shadow_call(
            account_id, resource, units, total, validate.description(description)
        )

    def _shadow_call(
        self, account_id: str, resource: str, units: int, total: int, description: str
    ) -> asyncio.Future[ChargeResult]:
        """shadow.lua on arguments already checked (by shadow_soon, or consume_soon)."""
        args = [ids.new_id(), account_id, str(total), resource, str(units), description]
        return self.runner.submit(self._shadow, self.keys.shadow_keys(account_id), args,
                                  _shadow_result)  # fmt: skip

    async def shadow(
        self, account_id: str, resource: str, units: int = 1, *, description: str | None = None
    ) -> ChargeResult:
        """:meth:`shadow_soon`, awaited."""
        return await self.shadow_soon(account_id, resource, units, description=description)

    async def consume_many(self, charges: Sequence[Charge]) -> list[ChargeOutcome]:
        """Charge each of ``charges`` (any accounts), as :meth:`consume` would one after the
        other: one outcome per charge, in order, the error it would raise alone in place of
        its result. Charges of one account run in their order, several as one script call;
        different accounts' charges go in one pipeline (see :mod:`.charge_list`). Not
        all-or-nothing: each charge stands or falls alone."""
        outcomes: list[ChargeOutcome | None] = [None] * len(charges)
        for indexes in rounds(charges):
            async with self._lists_in_flight.room_for(len(indexes)):
                await self._charge_round(charges, indexes, outcomes)
        done = [outcome for outcome in outcomes if outcome is not None]
        assert len(done) == len(charges)  # every charge is in exactly one round
        return done

    async def _charge_round(
        self, charges: Sequence[Charge], indexes: list[int], outcomes: list[ChargeOutcome | None]
    ) -> None:
        """Send the round's charges in one tick; put each one's outcome in its place."""
        sent: dict[int, asyncio.Future[ChargeResult]] = {}
        for index in indexes:
            charge = charges[index]
            try:
                sent[index] = self.consume_soon(
                    charge.account_id, charge.resource, charge.units,
                    description=charge.description, metadata=charge.metadata,
                    idempotency_key=charge.idempotency_key,
                )  # fmt: skip
            except QuotagateError as exc:  # bad input: refused here, nothing sent
                outcomes[index] = exc
        replies = await asyncio.gather(*sent.values(), return_exceptions=True)
        for index, reply in zip(sent, replies, strict=True):
            if not isinstance(reply, ChargeResult | QuotagateError):
                raise reply  # a bug or a cancellation, not an answer
            outcomes[index] = reply

    async def credit(
        self,
        account_id: str,
        amount: int,
        type: str = "grant",
        *,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        refund_of: str | None = None,
        counted: RefundCount | None = None,
    ) -> CreditResult:
        """Add credits (grant, earn, refund) or correct a balance (adjust, signed).

        A refund names the spend it returns (``refund_of``, a transaction id of this account):
        all refunds of one spend together return at most what it charged, or
        RefundExceedsSpend. Redis keeps that count while a spend is being refunded; when it
        has none, RefundNotCounted asks the caller for the ledger's (``counted``; see
        :func:`quotagate.ledger.refunds.refund`, which does both steps). A negative
        adjustment that would take available credits below zero raises AdjustBelowFloor.
        """
        ids.check_account_id(account_id)
        if type not in validate.CREDIT_TYPES:
            raise ValidationError(
                f"type must be one of {', '.join(validate.CREDIT_TYPES)}", field="type"
            )
        validate.amount(amount, signed=type == "adjust")
        spend_id = _spend_id(type, refund_of)
        desc = validate.description(description)
        meta = validate.metadata(metadata)
        idem = ids.check_idempotency_key(idempotency_key)
        fp = idempotency.credit_fingerprint(amount, type, desc, meta, spend_id) if idem else ""
        args = [
            ids.new_id(), account_id, str(amount), type, desc, meta, idem or "", fp,
            self._idem_ttl_ms, str(MAX_BALANCE), spend_id,
            "" if counted is None else str(counted.cost),
            "" if counted is None else str(counted.refunded),
            self._refund_count_ttl_ms,
        ]  # fmt: skip
        keys = (
            *self.keys.script_keys(account_id, idem),
            self.keys.refund_count(account_id, spend_id),
        )
        r = unwrap(await self.runner.run(self.scripts["credit"], keys, args))
        return CreditResult(r[0], int(r[1]), int(r[2]), r[3] == "1", r[4])

    async def grant(
        self,
        account_id: str,
        amount: int,
        *,
        source: str = "promotion",
        priority: int = 50,
        expires_at: datetime | None = None,
        expires_in: timedelta | None = None,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> GrantResult:
        """Give the account an explicit grant: ``amount`` credits from ``source``, spent in
        order of ``priority`` (0..100, lower first), then soonest expiry, then age; what is
        left of it at ``expires_at``, or ``expires_in`` after Redis makes it (neither: never),
        expires. A retry of a relative expiry under its idempotency key replays the grant the
        first call made. See ``docs/grants.md``."""
        ids.check_account_id(account_id)
        validate.amount(amount)
        source, priority, expires_ms = validate.grant_terms(source, priority, expires_at)
        expiry = "" if expires_ms is None else str(expires_ms)
        if expires_in is not None:
            if expires_at is not None:
                raise ValidationError(
                    "give either expires_at or expires_in, not both", field="expires_at"
                )
            expiry = "+" + str(validate.grant_lifetime_ms(expires_in))
        desc = validate.description(description)
        meta = validate.metadata(metadata)
        idem = ids.check_idempotency_key(idempotency_key)
        fp = (
            idempotency.grant_fingerprint(amount, source, priority, expiry, desc, meta)
            if idem
            else ""
        )
        args = [
            ids.new_id(), account_id, ids.new_id(), str(amount), expiry, str(priority), source,
            desc, meta, idem or "", fp, self._idem_ttl_ms, str(MAX_BALANCE),
        ]  # fmt: skip
        keys = (
            *self.keys.script_keys(account_id, idem),
            self.keys.grant_expiry(self.keys.partition_of(account_id)),
        )
        r = unwrap(await self.runner.run(self.scripts["grant"], keys, args))
        expires = _ms_to_dt(r[6]) if r[6] != "0" else None
        return GrantResult(r[0], r[1], int(r[2]), int(r[3]), r[4] == "1", r[5], expires)

    async def void_grant(
        self,
        account_id: str,
        grant_id: str,
        *,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> VoidResult:
        """Take back what is left of an explicit grant (an ``adjust`` transaction naming it).
        GrantNotFound when the account holds no such grant."""
        ids.check_account_id(account_id)
        if not isinstance(grant_id, str) or not 1 <= len(grant_id) <= 64:
            raise ValidationError("grant_id must be a grant's id", field="grant_id")
        desc = validate.description(description) or "grant voided"
        idem = ids.check_idempotency_key(idempotency_key)
        fp = idempotency.void_fingerprint(grant_id, desc) if idem else ""
        args = [ids.new_id(), account_id, grant_id, desc, idem or "", fp, self._idem_ttl_ms]
        r = await self._call("void_grant", account_id, idem, args)
        return VoidResult(r[0], int(r[1]), int(r[2]), int(r[3]), r[4] == "1", r[5])

    async def expire_grants(self, account_id: str) -> tuple[int, int]:
        """Expire the account's explicit grants past their expiry: (grants, credits)."""
        ids.check_account_id(account_id)
        keys = (
            *self.keys.script_keys(account_id),
            self.keys.grant_expiry(self.keys.partition_of(account_id)),
        )
        r = unwrap(await self.runner.run(self.scripts["expire_grants"], keys, [account_id]))
        return int(r[0]), int(r[1])

    async def expire_due_grants(self, partition: int, *, batch: int = 500) -> tuple[int, int]:
        """Sweep one partition: expire every explicit grant past its expiry (grants, credits).
        Each account swept leaves the index or is scored by its next expiry, so this ends."""
        now_ms = await self._server_time_ms()
        grants = credits = 0
        index = self.keys.grant_expiry(partition)
        while True:
            due = cast(
                list[str], await self.redis.zrangebyscore(index, "-inf", now_ms, start=0, num=batch)
            )
            for account_id in due:
                expired, amount = await self.expire_grants(account_id)
                grants, credits = grants + expired, credits + amount
            if len(due) < batch:
                return grants, credits

    def _held_amount(
        self, account_id: str, resource: str | None, units: int, amount: int | None
    ) -> int:
        """What a hold or a reservation sets aside: the price of ``units`` of ``resource``, or
        ``amount``; bad input raises, before anything is sent."""
        ids.check_account_id(account_id)
        if (resource is None) == (amount is None):
            raise ValidationError("a hold names either a resource or an amount", field="amount")
        if resource is not None:
            return validate.cost(self.config, resource, units)
        return validate.amount(amount)

    async def hold(
        self,
        account_id: str,
        *,
        resource: str | None = None,
        units: int = 1,
        amount: int | None = None,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> HoldResult:
        """Set credits aside: the cost of ``units`` of ``resource``, or an explicit ``amount``."""
        total = self._held_amount(account_id, resource, units, amount)
        ttl = self._hold_ttl(ttl_seconds)
        idem = ids.check_idempotency_key(idempotency_key)
        fp = validate.fingerprint("hold", resource, units, amount, ttl) if idem else ""
        args = [
            ids.new_id(), account_id, str(total), str(ttl * 1000), resource or "",
            str(units if resource else 1), idem or "", fp, self._idem_ttl_ms, "", "", "",
        ]  # fmt: skip
        r = await self._call("hold", account_id, idem, args)
        return HoldResult(r[0], int(r[1]), _ms_to_dt(r[2]), int(r[3]), r[4] == "1")

    async def reserve(
        self,
        account_id: str,
        *,
        resource: str | None = None,
        units: int = 1,
        amount: int | None = None,
        ttl_seconds: int | None = None,
        max_overrun: int = 0,
        on_expiry: str = "release",
        idempotency_key: str | None = None,
        idempotency_scope: idempotency.Scope = "api",
    ) -> HoldResult:
        """Hold an estimate until the actual cost is known: the cost of ``units`` of
        ``resource`` (a settle may then name units, at this price) or an ``amount``. A
        :meth:`settle` charges the actual cost, up to ``max_overrun`` credits above the
        estimate; unsettled at its deadline, the hold is released or, with ``on_expiry =
        "capture"``, charged the estimate. The result's ``hold_id`` names the account too
        (:func:`quotagate.ids.account_hold_id`): all a settle needs."""
        total = self._held_amount(account_id, resource, units, amount)
        price = self.config.resources[resource] if resource is not None else 0
        ttl = self._hold_ttl(ttl_seconds)
        validate.limit(max_overrun, "max_overrun")
        if on_expiry not in ("release", "capture"):
            raise ValidationError('on_expiry must be "release" or "capture"', field="on_expiry")
        idem = ids.check_idempotency_key(idempotency_key)
        fp = ""
        if idem:
            fp = validate.fingerprint(
                "reserve", resource, units, amount, ttl, max_overrun, on_expiry
            )
            idem = idempotency.scoped_key(idem, idempotency_scope)
        ttl_ms = self._idem_ttl_ms_by_scope[idempotency_scope]
        args = [
            ids.new_id(), account_id, str(total), str(ttl * 1000), resource or "",
            str(units if resource else 1), idem or "", fp, ttl_ms, str(max_overrun), on_expiry,
            str(price),
        ]  # fmt: skip
        r = await self._call("hold", account_id, idem, args)
        hold_id = ids.account_hold_id(account_id, r[0])
        return HoldResult(hold_id, int(r[1]), _ms_to_dt(r[2]), int(r[3]), r[4] == "1")

    async def settle(
        self,
        hold_id: str,
        *,
        amount: int | None = None,
        units: int | None = None,
        idempotency_key: str | None = None,
    ) -> SettleResult:
        """End a reservation (``hold_id`` as :meth:`reserve` gave it) with its actual cost,
        in credits (``amount``) or in units of its resource (``units``); 0 releases it. Up
        to the held amount it is charged and the rest released; above, up to the hold's
        ``max_overrun`` more while the credits allow, and the rest is the ``shortfall``."""
        account_id, hold_uuid = ids.split_account_hold_id(hold_id)
        if (amount is None) == (units is None):
            raise ValidationError('a settle names either "amount" or "units"', field="amount")
        given, name = (amount, "amount") if amount is not None else (units, "units")
        validate.limit(given, name)  # 0 too: nothing was used, the hold is released
        idem = ids.check_idempotency_key(idempotency_key)
        fp = validate.fingerprint("settle", hold_uuid, amount, units) if idem else ""
        args = [
            ids.new_id(), account_id, hold_uuid, "" if amount is None else str(amount),
            "" if units is None else str(units), idem or "", fp, self._idem_ttl_ms,
            self._idem_ttl_ms_by_scope["hook"],
        ]  # fmt: skip
        keys = (
            *self.keys.script_keys(account_id, idem),
            self.keys.settled_hold(account_id, hold_uuid),
        )
        r = unwrap(await self.runner.run(self.scripts["settle"], keys, args))
        transaction_id = None if r[0] == "-" else r[0]
        return SettleResult(
            transaction_id, int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), r[6] == "1"
        )

    def _hold_ttl(self, ttl_seconds: int | None) -> int:
        h = self.config.holds
        if ttl_seconds is None:
            return h.default_ttl_seconds
        ok = isinstance(ttl_seconds, int) and not isinstance(ttl_seconds, bool)
        if not ok or not h.min_ttl_seconds <= ttl_seconds <= h.max_ttl_seconds:
            raise ValidationError(
                f"ttl_seconds must be an integer from {h.min_ttl_seconds} to {h.max_ttl_seconds}",
                field="ttl_seconds",
            )
        return ttl_seconds

    async def capture(
        self,
        account_id: str,
        hold_id: str,
        amount: int | None = None,
        *,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> ChargeResult:
        """Charge a hold's actual cost (at most the held amount; default all of it)."""
        ids.check_account_id(account_id)
        hold_id = ids.check_hold_id(hold_id)
        if amount is not None:
            validate.amount(amount)
        desc = validate.description(description)
        meta = validate.metadata(metadata)
        idem = ids.check_idempotency_key(idempotency_key)
        fp = validate.fingerprint("capture", hold_id, amount, desc, meta) if idem else ""
        args = [
            ids.new_id(), account_id, hold_id, "" if amount is None else str(amount), desc,
            meta, idem or "", fp, self._idem_ttl_ms,
        ]  # fmt: skip
        r = await self._call("capture", account_id, idem, args)
        return ChargeResult(r[0], int(r[1]), int(r[2]), int(r[3]), r[4] == "1")

    async def release(
        self, account_id: str, hold_id: str, *, idempotency_key: str | None = None
    ) -> ReleaseResult:
        """End a hold without charging."""
        ids.check_account_id(account_id)
        hold_id = ids.check_hold_id(hold_id)
        idem = ids.check_idempotency_key(idempotency_key)
        fp = validate.fingerprint("release", hold_id) if idem else ""
        args = [account_id, hold_id, idem or "", fp, self._idem_ttl_ms]
        r = await self._call("release", account_id, idem, args)
        return ReleaseResult(int(r[0]), int(r[1]), r[2] == "1")

    async def expire_holds(self, account_id: str) -> tuple[int, int, int]:
        """End the account's holds past their deadline, each by its policy: (holds ended,
        credits released, credits captured)."""
        ids.check_account_id(account_id)
        r = await self._call("expire_holds", account_id, None, [account_id])
        return int(r[0]), int(r[1]), int(r[2])

    async def expire_due_holds(self, partition: int, *, batch: int = 500) -> tuple[int, int, int]:
        """Sweep one partition: end every hold past its deadline by its policy. (holds ended,
        credits released, credits captured)."""
        now_ms = await self._server_time_ms()
        holds = credits = captured = 0
        while True:
            due = cast(
                list[str],
                await self.redis.zrangebyscore(
                    self.keys.partition_hold_expiry(partition), "-inf", now_ms, start=0, num=batch
                ),
            )
            if not due:
                return holds, credits, captured
            for account_id in due:
                ended, released, charged = await self.expire_holds(account_id)
                holds, credits, captured = holds + ended, credits + released, captured + charged
            if len(due) < batch:
                return holds, credits, captured

    async def renew(self, account_id: str, period: str | None = None) -> RenewResult:
        """Apply the account's tier renewal policy once for ``period`` (default: this month)."""
        ids.check_account_id(account_id)
        period = period or current_period()
        args = [account_id, period, ids.new_id(), ids.new_id(), ids.new_id()]
        r = await self._call("renew", account_id, None, args)
        return RenewResult(account_id, r[0] == "1", int(r[1]), int(r[2]), int(r[3]), r[4])

    async def restore(
        self,
        account_id: str,
        *,
        tier: str,
        status: str,
        overdraft_limit: int,
        monthly_credits: int,
        purchased_credits: int,
        renewed_period: str,
        last_reset_at: datetime | None,
        created_at: datetime,
        force: bool = False,
        grants: Sequence[Grant] = (),
        member_state: Sequence[str] = (),
    ) -> bool:
        """Write an account's state rebuilt from the ledger. False if it exists (unless forced).

        ``grants``: its live explicit grants, written in spend order; ``purchased_credits``
        is then what the account holds besides its monthly credits and these.
        ``member_state``: a pool member's limit, own-credits-first, what its pool paid for it
        and in which period of the pool, as ``lua/restore.lua`` takes them (none for others)."""
        ids.check_account_id(account_id)
        args = [
            account_id, tier, status, str(overdraft_limit), str(monthly_credits),
            str(purchased_credits), renewed_period,
            str(int(last_reset_at.timestamp() * 1000)) if last_reset_at else "",
            str(int(created_at.timestamp() * 1000)), "1" if force else "0",
            grants_field(grants), *member_state,
        ]  # fmt: skip
        keys = self.keys.script_keys(account_id)
        grant_expiry = self.keys.grant_expiry(self.keys.partition_of(account_id))
        r = unwrap(await self.runner.run(self.scripts["restore"], (*keys, grant_expiry), args))
        return r[0] == "1"

    async def set_pool_usage(self, member_id: str, found: int, expected: int) -> bool:
        """A repair: what the member's pool paid for it this period becomes ``expected``,
        unless it is no longer ``found`` or the pool renewed since (False: nothing written)."""
        ids.check_account_id(member_id)
        if ids.pool_of(member_id) is None:
            raise ValidationError(f"{member_id} is not a member of a pool", field="account_id")
        validate.limit(found, "found")
        validate.limit(expected, "expected")
        keys = (*self.keys.script_keys(member_id), *self.keys.member_keys(member_id))
        r = unwrap(
            await self.runner.run(self.scripts["set_pool_usage"], keys, [str(found), str(expected)])
        )
        return r[0] == "1"

    # -- reads ------------------------------------------------------------------------------

    async def get_account(self, account_id: str) -> Account:
        """The account as Redis holds it now (holds past their deadline not counted)."""
        ids.check_account_id(account_id)
        k = self.keys.account(account_id)
        pool_key = self.keys.member_keys(account_id)[1:]
        with redis_failures():  # LOADING, READONLY...: unavailable, not an internal error
            a, raw_holds, (sec, usec), ready, *pool_period = await self._read_account(k, pool_key)
        if not a:
            if ready != "1":
                raise AccountNotLoaded(
                    "the account's state is not loaded in Redis; run `quotagate recover`"
                )
            raise AccountNotFound("no such account")
        now_ms = sec * 1000 + usec // 1000
        holds = tuple(sorted(_parse_holds(raw_holds, now_ms), key=lambda h: h.expires_at))
        m, b, od = int(a["m"]), int(a["b"]), int(a["od"])
        reserved = sum(h.amount for h in holds)
        renewal = self.config.tiers.get(a["tier"])
        monthly_expires = (
            period_end(a.get("rp", "")) if renewal and renewal.renewal == "reset" else None
        )
        grants = account_grants(m, b, a.get("g"), monthly_expires=monthly_expires, now_ms=now_ms)
        balance = m + b + sum(g.remaining for g in grants if g.id not in ("monthly", "purchased"))
        return Account(
            account_id=account_id,
            tier=a["tier"],
            status=a["st"],
            balance=balance,
            monthly_credits=m,
            purchased_credits=b,
            reserved=reserved,
            available=balance - reserved + od,
            overdraft_limit=od,
            created_at=_ms_to_dt(a["ca"]),
            last_reset_at=_ms_to_dt(a["rst"]) if a.get("rst") else None,
            renewed_period=a.get("rp", ""),
            holds=holds,
            grants=grants,
            membership=_membership(account_id, a, pool_period),
        )

    async def _read_account(self, k: AccountKeys, pool: Sequence[str] = ()) -> list[Any]:
        """The account, its holds, the server's time and the partition's ready flag, read
        together, and the renewed period of a member's pool (``pool``: its hash). On a cluster
        TIME names no key, which a MULTI on one slot cannot hold: it is read first, from the
        account's master, and so is at most a round trip older."""
        if is_cluster(self.redis):
            cluster = cast(RedisCluster, self.redis)
            node = cluster.get_node_from_key(k.account)
            now = await cluster.time(target_nodes=node)
            async with cluster.pipeline(transaction=True) as pipe:
                pipe.hgetall(k.account)
                pipe.hgetall(k.holds)
                pipe.hget(k.cfg, "ready")
                for key in pool:
                    pipe.hget(key, "rp")
                a, raw_holds, ready, *pool_period = await pipe.execute()
            return [a, raw_holds, now, ready, *pool_period]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(k.account)
            pipe.hgetall(k.holds)
            pipe.time()
            pipe.hget(k.cfg, "ready")
            for key in pool:
                pipe.hget(key, "rp")
            return await pipe.execute()

    async def account_ids(self, partition: int, *, count: int = 1000) -> AsyncIterator[list[str]]:
        """The account ids of one partition, a batch at a time (SSCAN of its account index).

        Memory stays bounded by ``count`` whatever the number of accounts. SSCAN may return an
        id twice: callers are idempotent or deduplicate.
        """
        cursor: int = 0
        while True:
            cursor, batch = await self.redis.sscan(
                self.keys.accounts(partition), cursor, count=count
            )
            if batch:
                yield [str(a) for a in batch]
            if cursor == 0:
                return

    async def partition_masters(self) -> dict[int, str] | None:
        """Each partition's master (``host:port``) as the cluster's slot map says now; None
        on a single Redis."""
        runner = self.runner
        if not isinstance(runner, ClusterScriptRunner):
            return None
        await runner.refresh()
        masters = {}
        for p in range(self.config.partitions):
            address = runner.master_of(key_slot(self.keys.cfg(p).encode()))
            masters[p] = address or "none"
        return masters

    async def _server_time_ms(self) -> int:
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000


def _membership(account_id: str, a: dict[str, str], pool_period: list[Any]) -> Membership | None:
    """A member's settings and what its pool paid for it in the pool's period (its usage
    counts from 0 once the pool renewed since it was counted: ``pp`` is then not the pool's
    ``rp``)."""
    pool_id = ids.pool_of(account_id)
    if pool_id is None:
        return None
    current = bool(pool_period) and pool_period[0] is not None and a.get("pp") == pool_period[0]
    return Membership(
        pool_id=pool_id,
        member_limit=int(a["pl"]) if "pl" in a else None,
        own_credits_first=a.get("pf") == "1",
        used=int(a.get("pu", 0)) if current else 0,
    )


def _parse_holds(raw: dict[str, str], now_ms: int) -> list[Hold]:
    """The holds still reserving credits: open ones, and those past their deadline that will
    be charged when they end (their credits are not coming back)."""
    holds = []
    for hold_id, value in raw.items():
        amount, expires, resource, units, *reservation = value.split("|")
        on_expiry = reservation[1] if reservation else "release"
        if int(expires) > now_ms or on_expiry == "capture":
            hold = Hold(hold_id, int(amount), _ms_to_dt(expires), resource, int(units), on_expiry)
            holds.append(hold)
    return holds
