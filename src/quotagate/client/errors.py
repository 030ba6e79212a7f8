"""The client's errors: the same classes the engine raises, chosen by the problem's ``code``.

A service can catch ``InsufficientCredits`` (with ``required`` and ``available``) or
``RateLimited`` (with ``retry_after_ms``) whether it embeds the engine or calls the gateway.
A code this version does not know becomes :class:`ApiError`; a gateway that does not answer
becomes :class:`~quotagate.errors.BackendUnavailable`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from quotagate import errors
from quotagate.errors import ApiError

Factory = Callable[[str, dict[str, Any]], errors.QuotagateError]


def _plain(cls: type[errors.QuotagateError]) -> Factory:
    return lambda detail, extra: cls(detail, **extra)


def _insufficient(detail: str, extra: dict[str, Any]) -> errors.QuotagateError:
    return errors.InsufficientCredits(int(extra.get("required", 0)), int(extra.get("available", 0)))


def _member_limit(detail: str, extra: dict[str, Any]) -> errors.QuotagateError:
    return errors.MemberLimitReached(int(extra.get("required", 0)), int(extra.get("available", 0)))


def _rate_limited(detail: str, extra: dict[str, Any]) -> errors.QuotagateError:
    return errors.RateLimited(int(extra.get("retry_after_ms", 1000)))


def _refund_exceeds(detail: str, extra: dict[str, Any]) -> errors.QuotagateError:
    return errors.RefundExceedsSpend(int(extra.get("cost", 0)), int(extra.get("refunded", 0)))


_BY_CODE: dict[str, Factory] = {
    "insufficient_credits": _insufficient,
    "member_limit_reached": _member_limit,
    "rate_limited": _rate_limited,
    "invalid_request": _plain(errors.ValidationError),
    "invalid_amount": _plain(errors.InvalidAmount),
    "unknown_resource": _plain(errors.UnknownResource),
    "unknown_tier": _plain(errors.UnknownTier),
    "balance_limit_exceeded": _plain(errors.BalanceLimitExceeded),
    "account_not_found": _plain(errors.AccountNotFound),
    "account_banned": _plain(errors.AccountBanned),
    "pool_not_found": _plain(errors.PoolNotFound),
    "hold_not_found": _plain(errors.HoldNotFound),
    "hold_settled": _plain(errors.HoldSettled),
    "hold_expired": _plain(errors.HoldExpired),
    "units_not_priced": _plain(errors.UnitsNotPriced),
    "spend_not_found": _plain(errors.SpendNotFound),
    "refund_exceeds_spend": _refund_exceeds,
    "grant_not_found": _plain(errors.GrantNotFound),
    "too_many_grants": _plain(errors.TooManyGrants),
    "idempotency_conflict": _plain(errors.IdempotencyConflict),
    "account_not_loaded": _plain(errors.AccountNotLoaded),
    "backend_unavailable": _plain(errors.BackendUnavailable),
    "ledger_unavailable": _plain(errors.LedgerUnavailable),
    "unauthorized": _plain(errors.Unauthorized),
    "forbidden": _plain(errors.Forbidden),
    "not_found": _plain(errors.NotFound),
    "method_not_allowed": _plain(errors.MethodNotAllowed),
    "payload_too_large": _plain(errors.PayloadTooLarge),
}

_STANDARD = frozenset({"type", "title", "status", "detail", "code", "instance"})


def error_from_problem(
    status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> errors.QuotagateError:
    """The typed error for an answer with status >= 400."""
    try:
        problem = msgspec.json.decode(body)
    except msgspec.DecodeError:
        problem = None
    if not isinstance(problem, dict) or not isinstance(problem.get("code"), str):
        text = body[:200].decode(errors="replace")
        return ApiError(f"HTTP {status}: {text}", f"http_{status}", status)
    return error_from_document(status, problem, headers)


def error_from_document(
    status: int, problem: dict[str, Any], headers: Mapping[str, str] | None = None
) -> errors.QuotagateError:
    """The typed error for a decoded problem document (an answer's, or a batch result's)."""
    code = str(problem.get("code") or f"http_{status}")
    detail = str(problem.get("detail") or problem.get("title") or code)
    extra = {k: v for k, v in problem.items() if k not in _STANDARD}
    if code == "rate_limited" and "retry_after_ms" not in extra and headers is not None:
        retry_after = headers.get("retry-after", "")
        if retry_after.isdigit():
            extra["retry_after_ms"] = int(retry_after) * 1000
    factory = _BY_CODE.get(code)
    if factory is None:
        return ApiError(detail, code, status, **extra)
    return factory(detail, extra)
