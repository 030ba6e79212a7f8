"""Every error quotagate raises on purpose, in one tree.

    QuotagateError
    ├── ConfigError                    the config file or an environment setting is wrong
    ├── ValidationError                bad input: nothing was written            (422)
    │   ├── InvalidAmount              amount/units not an integer in 1..10^12  (422)
    │   ├── InvalidAccountId           id outside 1-128 chars of A-Za-z0-9._:@- (422)
    │   ├── UnknownResource            resource not in the config               (422)
    │   ├── UnknownTier                tier not in the config                    (422)
    │   └── BalanceLimitExceeded       the change would pass MAX_BALANCE         (422)
    ├── CreditError                    a well-formed request the books refuse
    │   ├── InsufficientCredits        available < required                      (402)
    │   ├── RateLimited                the tier's request rate is exceeded       (429)
    │   ├── AccountNotFound            no such account                           (404)
    │   ├── AccountBanned              the account is banned                     (403)
    │   ├── HoldNotFound               unknown, captured, released or expired    (404)
    │   ├── CaptureExceedsHold         capture amount above the held amount      (422)
    │   ├── SpendNotFound              refund_of names no spend of this account  (404)
    │   ├── RefundExceedsSpend         the spend's refunds would pass its cost   (409)
    │   ├── AdjustBelowFloor           a debit would take available below zero   (422)
    │   ├── IdempotencyConflict        same key, different request               (409)
    │   └── WebhookNotFound            no such webhook endpoint or delivery      (404)
    └── BackendError                   a backend could not do its part           (503)
        ├── AccountNotLoaded           Redis lost its data; recovery pending     (503)
        ├── RefundNotCounted           Redis holds no count of the spend's refunds (503):
        │                              the caller counts them in the ledger and retries
        └── BackendUnavailable         Redis or Postgres did not answer          (503)

Each class carries a stable ``code`` (the ``code`` of the HTTP problem document) and an
``http_status``; the HTTP layer maps them in one place and nothing else needs to know.
"""

from __future__ import annotations

from typing import Any


class QuotagateError(Exception):
    """Base of every error quotagate raises on purpose."""

    code: str = "internal_error"
    http_status: int = 500

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, Any] = extra


class ConfigError(QuotagateError):
    """The config file or an environment setting is invalid; the message names it."""

    code = "config_error"


class ValidationError(QuotagateError):
    """Bad input. Raised before anything is written."""

    code = "invalid_request"
    http_status = 422


class InvalidAmount(ValidationError):
    code = "invalid_amount"


class InvalidAccountId(ValidationError):
    code = "invalid_request"


class UnknownResource(ValidationError):
    code = "unknown_resource"


class UnknownTier(ValidationError):
    code = "unknown_tier"


class BalanceLimitExceeded(ValidationError):
    code = "balance_limit_exceeded"


class CreditError(QuotagateError):
    """A well-formed request that the books refuse."""

    code = "credit_error"
    http_status = 400


class InsufficientCredits(CreditError):
    code = "insufficient_credits"
    http_status = 402

    def __init__(self, required: int, available: int) -> None:
        super().__init__(
            f"this needs {required} credits and {available} are available",
            required=required,
            available=available,
        )
        self.required = required
        self.available = available


class RateLimited(CreditError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(
            f"the request rate of this account's tier is exceeded; retry in {retry_after_ms} ms",
            retry_after_ms=retry_after_ms,
        )
        self.retry_after_ms = retry_after_ms


class AccountNotFound(CreditError):
    code = "account_not_found"
    http_status = 404


class AccountBanned(CreditError):
    code = "account_banned"
    http_status = 403


class HoldNotFound(CreditError):
    code = "hold_not_found"
    http_status = 404


class CaptureExceedsHold(CreditError):
    code = "invalid_amount"
    http_status = 422


class WebhookNotFound(CreditError):
    code = "webhook_not_found"
    http_status = 404


class SpendNotFound(CreditError):
    """Also for a spend of another account: the answer never tells whether one exists."""

    code = "spend_not_found"
    http_status = 404


class RefundExceedsSpend(CreditError):
    code = "refund_exceeds_spend"
    http_status = 409

    def __init__(self, cost: int, refunded: int) -> None:
        super().__init__(
            f"the spend charged {cost} and its refunds returned {refunded} already; "
            f"at most {cost - refunded} more may be refunded",
            cost=cost,
            refunded=refunded,
            refundable=cost - refunded,
        )


class AdjustBelowFloor(CreditError):
    """Holds were admitted against the available credits: a debit that took them below zero
    would let the holds' captures take the balance below its floor."""

    code = "adjust_below_floor"
    http_status = 422

    def __init__(self, available: int) -> None:
        super().__init__(
            f"this adjustment would take available credits below zero ({available} available: "
            "balance minus held credits plus overdraft)",
            available=available,
        )


class IdempotencyConflict(CreditError):
    code = "idempotency_conflict"
    http_status = 409


class BackendError(QuotagateError):
    code = "backend_unavailable"
    http_status = 503


class AccountNotLoaded(BackendError):
    code = "account_not_loaded"


class RefundNotCounted(BackendError):
    """The credit script found no count of the spend's refunds and was given none."""

    code = "refund_not_counted"


class BackendUnavailable(BackendError):
    code = "backend_unavailable"
