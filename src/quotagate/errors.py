"""Every exception class quotagate defines, in one tree.

    Exception
    ├── QuotagateError                 an error raised on purpose, with a code and a status
    │   ├── ConfigError                the config file or an environment setting is wrong
    │   │   ├── EvictingRedis          Redis may evict quotagate's keys (maxmemory-policy)
    │   │   └── RedisWithoutFunctions  Redis older than 7.0: no FUNCTION LOAD for the scripts
    │   ├── ValidationError            bad input: nothing was written            (422)
    │   │   ├── InvalidAmount          amount/units not an integer in 1..10^12  (422)
    │   │   ├── InvalidAccountId       id outside 1-128 chars of A-Za-z0-9._:@- (422)
    │   │   ├── UnknownResource        resource not in the config               (422)
    │   │   ├── UnknownTier            tier not in the config                    (422)
    │   │   └── BalanceLimitExceeded   the change would pass MAX_BALANCE         (422)
    │   ├── CreditError                a well-formed request the books refuse
    │   │   ├── InsufficientCredits    available < required                      (402)
    │   │   │   └── MemberLimitReached  the pool would pass the member's limit (402)
    │   │   ├── RateLimited            the tier's request rate is exceeded       (429)
    │   │   ├── AccountNotFound        no such account                           (404)
    │   │   ├── AccountBanned          the account (or a member's pool) is banned (403)
    │   │   ├── PoolNotFound           a member of a pool that does not exist    (404)
    │   │   ├── HoldNotFound           unknown, captured, released or expired    (404)
    │   │   ├── HoldSettled            the reservation was settled already       (409)
    │   │   ├── HoldExpired            the reservation's deadline passed         (409)
    │   │   ├── UnitsNotPriced         a settle in units of a hold priced in credits (422)
    │   │   ├── CaptureExceedsHold     capture amount above the held amount      (422)
    │   │   ├── SpendNotFound          refund_of names no spend of this account  (404)
    │   │   ├── RefundExceedsSpend     the spend's refunds would pass its cost   (409)
    │   │   ├── AdjustBelowFloor       a debit would take available below zero   (422)
    │   │   ├── IdempotencyConflict    same key, different request               (409)
    │   │   ├── GrantNotFound          no explicit grant by that id holds credits (404)
    │   │   ├── TooManyGrants          the account holds the most grants it may  (409)
    │   │   └── WebhookNotFound        no such webhook endpoint or delivery      (404)
    │   ├── BackendError               a backend could not do its part           (503)
    │   │   ├── AccountNotLoaded       Redis lost its data; recovery pending     (503)
    │   │   ├── RefundNotCounted       Redis holds no count of the spend's refunds (503):
    │   │   │                          the caller counts them in the ledger and retries
    │   │   └── BackendUnavailable     Redis or Postgres did not answer          (503)
    │   │       ├── LedgerUnavailable  the answer needs Postgres, which did not answer;
    │   │       │                      nothing was done                          (503)
    │   │       └── PoolExhausted      no connection to a cluster node came free in time
    │   │                              (also a redis-py MaxConnectionsError)
    │   ├── ScriptError                a Lua script failed in Redis: a bug       (500)
    │   │   └── Redirected             MOVED/ASK: the script did not run; another
    │   │                              cluster node serves its slot
    │   ├── RecoveryRefused            the outboxes hold entries the ledger lacks (409)
    │   ├── ShadowTier                 consume met a tier in shadow mode: the engine makes
    │   │                              the charge a shadow charge (never answered)
    │   ├── StackError                 a part of `quotagate up` failed or stopped
    │   ├── ApiError                   the client got a problem code it does not know
    │   └── HttpError                  a request the gateway refuses before the engine sees it
    │       ├── Unauthorized           no API key, or one we do not know         (401)
    │       │   └── MissingAccountHeader  the hook got no X-Account-Id        (401)
    │       ├── Forbidden              the key lacks the scope                   (403)
    │       ├── NotFound               no such endpoint                          (404)
    │       ├── MethodNotAllowed       the endpoint exists, the method does not  (405)
    │       ├── PayloadTooLarge        the body is above the cap                 (413)
    │       └── InvalidPath            a proxied path the hook will not price    (400)
    ├── OutboxEntryInvalid             an outbox entry the ledger cannot read
    ├── KeysRefreshing                 a token's signing key is being fetched: ask again
    └── NoRedisTransport               the Redis client has no socket to take over
    BaseException
    └── StackStopRequested             a signal asked `quotagate up` to stop

Each :class:`QuotagateError` carries a stable ``code`` (the ``code`` of the HTTP problem
document) and an ``http_status``; the HTTP layer maps them in one place and nothing else needs
to know. The classes outside QuotagateError are signals between two parts of quotagate, caught
by the part that waits for them and never shown to a caller as an answer: an invalid outbox
entry is quarantined by the flush, a key fetch is awaited by the token check, a missing socket
makes the script batcher use the connection pool, and a stop request unwinds `quotagate up`
from a signal handler (a BaseException, so that no ``except Exception`` on the way swallows it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.exceptions import MaxConnectionsError

if TYPE_CHECKING:
    import asyncio


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


class EvictingRedis(ConfigError):
    """Redis may evict quotagate's keys (its maxmemory-policy is not noeviction)."""


class RedisWithoutFunctions(ConfigError):
    """Redis does not know FUNCTION LOAD (older than 7.0, or the command renamed away): the
    scripts run as Redis functions."""


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


class MemberLimitReached(InsufficientCredits):
    """A member's charge would make its pool pay more than the member's limit for the pool's
    period: ``available`` is what the member may still spend."""

    code = "member_limit_reached"

    def __init__(self, required: int, available: int) -> None:
        CreditError.__init__(
            self,
            f"this needs {required} credits and the member may spend {available} more this "
            "period (its limit in its pool)",
            required=required,
            available=available,
        )
        self.required = required
        self.available = available


class PoolNotFound(CreditError):
    """A member (``<pool>~<name>``) of a pool that does not exist."""

    code = "pool_not_found"
    http_status = 404


class HoldNotFound(CreditError):
    code = "hold_not_found"
    http_status = 404


class HoldSettled(CreditError):
    code = "hold_settled"
    http_status = 409


class HoldExpired(CreditError):
    """Its deadline passed before the settle: its ``on_expiry`` policy ended it."""

    code = "hold_expired"
    http_status = 409


class UnitsNotPriced(CreditError):
    """The hold's estimate was a number of credits, not units of a resource."""

    code = "units_not_priced"
    http_status = 422


class CaptureExceedsHold(CreditError):
    code = "invalid_amount"
    http_status = 422


class GrantNotFound(CreditError):
    """No explicit grant of the account by that id holds credits: it was spent, expired or
    voided, or never was (the standing grants, ``monthly`` and ``purchased``, are adjusted,
    not voided)."""

    code = "grant_not_found"
    http_status = 404


class TooManyGrants(CreditError):
    """Every charge of an account reads all its explicit grants: their number is capped."""

    code = "too_many_grants"
    http_status = 409


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


class LedgerUnavailable(BackendUnavailable):
    """The answer needs PostgreSQL, which did not answer, and nothing was done: the request may
    be sent again (with the same idempotency key or another) once the ledger is back."""

    code = "ledger_unavailable"


class PoolExhausted(BackendUnavailable, MaxConnectionsError):
    """No connection to a node of the Redis Cluster came free in time: every one allowed
    (QUOTAGATE_REDIS_MAX_CONNECTIONS) is busy. Also a redis-py connection error, so that code
    riding out Redis failures rides this one out too."""


class ScriptError(QuotagateError):
    """A script failed in Redis: a bug, never bad input (scripts reply to bad input)."""

    code = "internal_error"
    http_status = 500


class Redirected(ScriptError):
    """A cluster node answered MOVED or ASK: the script did not run, another node serves its
    slot. The cluster router retries the call there; a client for one server (a standalone
    URL naming one node of a cluster) cannot, and the call fails as a configuration fault."""

    def __init__(self, kind: str, slot: int, address: str) -> None:
        super().__init__(
            f"Redis answered {kind} {slot} {address}: this server is one node of a Redis "
            "Cluster; name the cluster with a redis+cluster:// URL"
        )
        self.ask = kind == "ASK"
        self.slot = slot
        self.address = address


class RecoveryRefused(QuotagateError):
    """The outboxes hold entries the ledger does not have yet; recovering now would lose them."""

    code = "recovery_refused"
    http_status = 409


class ShadowTier(QuotagateError):
    """consume.lua found the account's tier in shadow mode and did nothing: the engine sends
    the charge to shadow.lua instead. Caught by the engine; never an answer."""

    code = "shadow_tier"


class StackError(QuotagateError):
    """A part of the local stack failed to start or stopped on its own."""

    code = "stack_error"


class ApiError(QuotagateError):
    """A problem whose code this client does not map to a class (see ``code``, ``http_status``)."""

    def __init__(self, detail: str, code: str, http_status: int, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.code = code
        self.http_status = http_status


class HttpError(QuotagateError):
    """A request refused by the gateway itself, before the engine sees it. These classes import
    nothing from the web framework, so the Python client raises the same ones."""

    code = "invalid_request"
    http_status = 400


class Unauthorized(HttpError):
    code = "unauthorized"
    http_status = 401


class MissingAccountHeader(Unauthorized):
    """The proxy named no account (``X-Account-Id``, identity mode ``header``): the same code
    as any 401, with a title of its own."""


class Forbidden(HttpError):
    code = "forbidden"
    http_status = 403


class NotFound(HttpError):
    code = "not_found"
    http_status = 404


class MethodNotAllowed(HttpError):
    code = "method_not_allowed"
    http_status = 405


class PayloadTooLarge(HttpError):
    code = "payload_too_large"
    http_status = 413


class InvalidPath(HttpError):
    """A proxied request's path the hook will not price (see :mod:`quotagate.api.priced_path`)."""

    code = "invalid_path"
    http_status = 400


class OutboxEntryInvalid(Exception):
    """An outbox entry the ledger cannot read; it is left in the stream."""


class KeysRefreshing(Exception):
    """The token's kid is unknown and the JWKS is being fetched; ask again once ``fetch`` is
    done. Not a refusal: nothing is answered until then."""

    def __init__(self, fetch: asyncio.Future[None]) -> None:
        super().__init__("the JWKS is being fetched")
        self.fetch = fetch


class NoRedisTransport(Exception):
    """The Redis client's connections have no asyncio transport to take over (fakeredis)."""


class StackStopRequested(BaseException):
    """Raised from a signal handler: leave whatever we are doing and take the stack down."""
