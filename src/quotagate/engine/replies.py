"""Where Redis's answers become quotagate's errors: a script's sentinel reply becomes the typed
exception it stands for, and a Redis that cannot serve for now becomes BackendUnavailable.

Redis answers some commands with an error that says nothing about the command and everything
about the server's state: it is loading its data after a restart, running a long script, a
replica after a failover, and so on (:data:`TRANSIENT_STATES`). Those are the backend being
unavailable (503, or the hook's failure mode), never an internal error: every path that talks
to Redis, batched script calls, redis-py commands and the jobs, classifies through
:func:`unavailable`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence

from redis import exceptions as redis_errors

from quotagate import errors

TRANSIENT_STATES = {
    "LOADING": "Redis is loading its data into memory (after a restart)",
    "BUSY": "Redis is busy running a long script or function",
    "MASTERDOWN": "this Redis is a replica that lost its master and serves no stale data",
    "READONLY": "this Redis is a read-only replica (a failover may have demoted it)",
    "CLUSTERDOWN": "the Redis cluster is down or does not serve this slot",
    "TRYAGAIN": "the Redis cluster is moving this slot between nodes",
    "MISCONF": "Redis refuses writes: it cannot save its data to disk",
    "NOREPLICAS": "Redis refuses writes: too few replicas acknowledge them",
    "OOM": "Redis refuses writes: it has reached its maxmemory",
}
"""The first word of each error reply that names a state of the server rather than a fault
of the command, and what it means. Each passes once the server recovers, fails over back or
is fixed; until then nothing was written (Redis refuses the command before it runs, or a
script's first write, and the scripts write nothing before their checks pass)."""


def transient_state(message: str) -> str | None:
    """The TRANSIENT_STATES word an error reply starts with, or None. redis-py puts the reply
    of a command inside a pipeline or a MULTI after words of its own: it is looked for there."""
    word = message.split(" ", 1)[0]
    if word in TRANSIENT_STATES:
        return word
    inner = _IN_PIPELINE.search(message)
    return inner[1] if inner and inner[1] in TRANSIENT_STATES else None


_IN_PIPELINE = re.compile(r"(?:of pipeline caused error: \(?'?|discarded because of: )([A-Z]+) ")


def unavailable(exc: BaseException | str) -> errors.BackendUnavailable | None:
    """BackendUnavailable for a Redis that did not answer or cannot serve for now (an error
    reply's text, or a redis-py or socket exception), else None: a fault of the call."""
    if isinstance(exc, errors.BackendUnavailable):
        return exc
    if isinstance(exc, str):
        message, state = exc, transient_state(exc)
    else:
        # redis-py cuts the first word off the messages it knows and keeps it as status_code.
        code = getattr(exc, "status_code", None)
        message = f"{code} {exc}" if code else str(exc)
        state = transient_state(message)
        if isinstance(exc, redis_errors.MaxConnectionsError):  # Redis answers; we may not ask
            return errors.BackendUnavailable(
                str(exc)
                or "every connection allowed to a Redis node is in use "
                "(QUOTAGATE_REDIS_MAX_CONNECTIONS)"
            )
        if state is None and isinstance(exc, _NO_ANSWER):
            return errors.BackendUnavailable(f"Redis did not answer: {exc}")
    if state is None:
        return None
    return errors.BackendUnavailable(f"{TRANSIENT_STATES[state]} ({message})", redis_state=state)


_NO_ANSWER = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


@contextlib.contextmanager
def redis_failures() -> Iterator[None]:
    """Raise BackendUnavailable for what :func:`unavailable` names so; any other Redis error
    (a bug: a wrong type, a bad command) goes on as it is."""
    try:
        yield
    except redis_errors.RedisError as exc:
        down = unavailable(exc)
        if down is None:
            raise
        raise down from exc


_AMOUNT_ARGS = {
    "actual_cost",
    "cost",
    "units",
    "amount",
    "overdraft_limit",
    "opening_grant",
    "grant",
    "credit_limit",
}


def _invalid(args: Sequence[str]) -> errors.QuotagateError:
    name = args[0] if args else "argument"
    if name in _AMOUNT_ARGS:
        return errors.InvalidAmount(f"{name} must be an integer from 1 to 10^12", field=name)
    return errors.ValidationError(f"invalid {name}", field=name)


_ERRORS: dict[str, Callable[[Sequence[str]], errors.QuotagateError]] = {
    "invalid_argument": _invalid,
    "shadow_tier": lambda a: errors.ShadowTier("the account's tier is in shadow mode"),
    "idempotency_conflict": lambda a: errors.IdempotencyConflict(
        "this Idempotency-Key was used with a different request"
    ),
    "account_not_loaded": lambda a: errors.AccountNotLoaded(
        "the account's state is not loaded in Redis; run `quotagate recover`"
    ),
    "account_not_found": lambda a: errors.AccountNotFound("no such account"),
    "account_banned": lambda a: errors.AccountBanned("the account is banned"),
    "pool_banned": lambda a: errors.AccountBanned("the account's pool is banned"),
    "pool_not_found": lambda a: errors.PoolNotFound("the account's pool does not exist"),
    "member_limit": lambda a: errors.MemberLimitReached(int(a[0]), int(a[1])),
    "rate_limited": lambda a: errors.RateLimited(int(a[0])),
    "insufficient_credits": lambda a: errors.InsufficientCredits(int(a[0]), int(a[1])),
    "balance_limit": lambda a: errors.BalanceLimitExceeded(
        f"the balance would pass the largest allowed ({a[1]})", balance=int(a[0])
    ),
    "grant_not_found": lambda a: errors.GrantNotFound(
        "no such grant: unknown, spent, expired or voided"
    ),
    "too_many_grants": lambda a: errors.TooManyGrants(
        f"the account holds {a[0]} grants, the most it may: void or spend some first"
    ),
    "hold_not_found": lambda a: errors.HoldNotFound("no such hold: unknown, ended or expired"),
    "hold_settled": lambda a: errors.HoldSettled("this hold was settled already"),
    "hold_expired": lambda a: errors.HoldExpired(
        f"this hold's deadline passed before the settle; it was ended by its policy ({a[0]})",
        on_expiry=a[0],
    ),
    "units_not_priced": lambda a: errors.UnitsNotPriced(
        'this hold was priced in credits, not units: settle it with "amount"', field="units"
    ),
    "capture_exceeds_hold": lambda a: errors.CaptureExceedsHold(
        f"capture amount is above the held amount ({a[0]})", held=int(a[0])
    ),
    "refund_not_counted": lambda a: errors.RefundNotCounted(
        "no count of this spend's refunds in Redis; count them in the ledger"
    ),
    "refund_exceeds_spend": lambda a: errors.RefundExceedsSpend(int(a[0]), int(a[1])),
    "adjust_below_floor": lambda a: errors.AdjustBelowFloor(int(a[0])),
    "unknown_tier": lambda a: errors.UnknownTier(f"unknown tier {a[0]!r}", field="tier"),
}


def unwrap(reply: list[str]) -> list[str]:
    """The fields after "ok", or raise the error the reply names."""
    if reply[0] == "ok":
        return reply[1:]
    code, args = reply[1], reply[2:]
    factory = _ERRORS.get(code)
    if factory is None:
        raise errors.QuotagateError(f"unexpected script reply {reply!r}")
    raise factory(args)
