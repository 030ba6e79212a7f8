"""Turns a script's sentinel error reply into the typed exception it stands for."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from quotagate import errors

_AMOUNT_ARGS = {
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
    "idempotency_conflict": lambda a: errors.IdempotencyConflict(
        "this Idempotency-Key was used with a different request"
    ),
    "account_not_loaded": lambda a: errors.AccountNotLoaded(
        "the account's state is not loaded in Redis; run `quotagate recover`"
    ),
    "account_not_found": lambda a: errors.AccountNotFound("no such account"),
    "account_banned": lambda a: errors.AccountBanned("the account is banned"),
    "rate_limited": lambda a: errors.RateLimited(int(a[0])),
    "insufficient_credits": lambda a: errors.InsufficientCredits(int(a[0]), int(a[1])),
    "balance_limit": lambda a: errors.BalanceLimitExceeded(
        f"the balance would pass the largest allowed ({a[1]})", balance=int(a[0])
    ),
    "hold_not_found": lambda a: errors.HoldNotFound("no such hold: unknown, ended or expired"),
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
