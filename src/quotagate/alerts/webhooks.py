"""Webhook endpoints and the delivery of alerts to them, signed as Standard Webhooks says.

Each delivery is a POST of the alert's JSON (``store.payload``) with three headers:
``webhook-id`` (the delivery's id, the same on every try, so a receiver can drop repeats),
``webhook-timestamp`` (Unix seconds of this try) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed by the endpoint's secret), made by
the ``standardwebhooks`` package, which receivers can use to verify them.

Deliveries are rows of ``webhook_deliveries``, written with their alert (so none is lost
between the alert and its sending), and sent by :func:`deliver_due`, which the RQ job
``quotagate.jobs.webhooks.deliver_webhooks`` runs every few seconds: it claims the due rows
(``FOR UPDATE SKIP LOCKED``, and moves their next try past its own deadline, so two jobs never
send one delivery at once), sends them all at once with a timeout, and records each outcome.
A 2xx answer delivers; anything else (another status, a timeout, a refused connection) is
tried again after ``backoff_seconds``, doubled each time up to ``max_backoff_seconds``; after
``max_attempts`` tries the delivery is ``dead`` until :func:`redeliver` sends it again.

Nothing here runs in the flush or on the charging path: a slow or dead endpoint costs only
this job its timeout. Secrets are never logged, and URLs are logged without their query.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from standardwebhooks import Webhook as Signer

from quotagate import metrics
from quotagate.alerts.store import KINDS
from quotagate.config import Webhooks
from quotagate.errors import ValidationError, WebhookNotFound
from quotagate.ledger.ledger import Ledger
from quotagate.ledger.postgres import in_transaction

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
"""A new endpoint's secret: 256 random bits, as long as the HMAC-SHA256 it keys."""

CLAIM_BATCH = 200
"""Deliveries one round sends at most (all at once)."""

MAX_URL_CHARS = 2048


@dataclass(frozen=True, slots=True)
class Webhook:
    """A webhook endpoint as the API shows it (its secret is never read back)."""

    id: str
    url: str
    events: list[str]
    description: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Delivery:
    """One alert's delivery to one endpoint, as the API shows it."""

    id: str
    endpoint_id: str
    alert_id: int
    event: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: str
    url: str
    secret: str
    payload: str
    attempts: int


class _NoQueries(logging.Filter):
    """httpx logs each request's whole URL at INFO; a webhook URL's query may carry the
    receiver's own token, so the URLs of its records are logged as :func:`redact_url` says."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_url(str(a)) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True


logging.getLogger("httpx").addFilter(_NoQueries())


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signed_headers(secret: str, delivery_id: str, body: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one try."""
    signature = Signer(secret).sign(delivery_id, at, body)
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def _check_endpoint(url: str, events: Sequence[str], secret: str | None) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL_CHARS:
        raise ValidationError("url must be an http:// or https:// URL", field="url")
    unknown = sorted(set(events) - {*KINDS, "*"})
    if not events or unknown:
        raise ValidationError(f"events must name some of {', '.join(KINDS)} (or *)", field="events")
    if secret is not None:
        try:
            Signer(secret)
        except Exception:
            raise ValidationError(
                "secret must be whsec_ and a base64 key (or leave it out: one is made)",
                field="secret",
            ) from None


def redact_url(url: str) -> str:
    """The URL without user info, query or fragment: what may be logged of it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def create_endpoint(
    ledger: Ledger,
    url: str,
    events: Sequence[str],
    *,
    secret: str | None = None,
    description: str | None = None,
) -> tuple[Webhook, str]:
    """A new endpoint and its secret (made here unless given): the only time it is shown."""
    _check_endpoint(url, events, secret)
    secret = secret or new_secret()
    endpoint_id = f"ep_{uuid.uuid4().hex}"
    sql = (
        "INSERT INTO webhook_endpoints (id, url, events, secret, description)"
        " VALUES ($1, $2, $3, $4, $5) RETURNING id, url, events, description, created_at"
    )

    async def write(conn: asyncpg.Connection) -> Webhook:
        row = await conn.fetchrow(sql, endpoint_id, url, sorted(set(events)), secret, description)
        return Webhook(**dict(row))

    return await in_transaction(ledger.pool, write), secret


async def list_endpoints(ledger: Ledger) -> list[Webhook]:
    sql = (
        "SELECT id, url, events, description, created_at FROM webhook_endpoints"
        " WHERE disabled_at IS NULL ORDER BY created_at, id"
    )

    async def read(conn: asyncpg.Connection) -> list[Webhook]:
        return [Webhook(**dict(r)) for r in await conn.fetch(sql)]

    return await in_transaction(ledger.pool, read, readonly=True)


async def delete_endpoint(ledger: Ledger, endpoint_id: str) -> None:
    """Remove an endpoint and its deliveries; NotFound if there is none."""

    async def write(conn: asyncpg.Connection) -> str:
        result: str = await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id)
        return result

    if await in_transaction(ledger.pool, write) == "DELETE 0":
        raise WebhookNotFound(f"no webhook endpoint {endpoint_id}")


_CLAIM_SQL = """
WITH due AS (
    SELECT id FROM webhook_deliveries
    WHERE status = 'pending' AND next_attempt_at <= $1
    ORDER BY next_attempt_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d SET next_attempt_at = $3
FROM due, webhook_endpoints e
WHERE d.id = due.id AND e.id = d.endpoint_id
RETURNING d.id, e.url, e.secret, d.payload, d.attempts
"""

_DONE_SQL = """
UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1,
    last_status = $2, last_error = NULL, delivered_at = now()
WHERE id = $1
"""

_FAILED_SQL = """
UPDATE webhook_deliveries SET status = $2, attempts = attempts + 1, last_status = $3,
    last_error = $4, next_attempt_at = $5
WHERE id = $1
"""


@dataclass(slots=True)
class DeliveryRound:
    delivered: int = 0
    retried: int = 0
    dead: int = 0

    @property
    def sent(self) -> int:
        return self.delivered + self.retried + self.dead


def backoff_seconds(policy: Webhooks, failures: int) -> float:
    """The wait before the next try, after ``failures`` failed tries (1 or more)."""
    return float(min(policy.max_backoff_seconds, policy.backoff_seconds * 2 ** (failures - 1)))


async def deliver_due(
    ledger: Ledger, policy: Webhooks, *, client: httpx.AsyncClient | None = None
) -> DeliveryRound:
    """Send every due delivery once (up to ``CLAIM_BATCH``), all at once; record outcomes."""
    timeout_seconds = policy.timeout_ms / 1000
    now = datetime.now(UTC)
    lease = now + timedelta(seconds=timeout_seconds * 2 + 5)

    async def claim(conn: asyncpg.Connection) -> list[_Claimed]:
        rows = await conn.fetch(_CLAIM_SQL, now, CLAIM_BATCH, lease)
        return [_Claimed(**dict(r)) for r in rows]

    claimed = await in_transaction(ledger.pool, claim)
    if not claimed:
        return DeliveryRound()
    own = client is None
    http = client or httpx.AsyncClient(timeout=timeout_seconds, follow_redirects=False)
    try:
        outcomes = await asyncio.gather(*(_send(http, c, timeout_seconds) for c in claimed))
    finally:
        if own:
            await http.aclose()
    return await _record(ledger, policy, claimed, outcomes)


async def _send(
    http: httpx.AsyncClient, delivery: _Claimed, timeout_seconds: float
) -> tuple[int | None, str | None]:
    """(status, error): the status of the answer, or None and why there was none."""
    headers = signed_headers(delivery.secret, delivery.id, delivery.payload, datetime.now(UTC))
    try:
        async with asyncio.timeout(timeout_seconds):
            answer = await http.post(delivery.url, content=delivery.payload, headers=headers)
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        return None, type(exc).__name__
    return answer.status_code, None if answer.is_success else f"HTTP {answer.status_code}"


async def _record(
    ledger: Ledger,
    policy: Webhooks,
    claimed: Sequence[_Claimed],
    outcomes: Sequence[tuple[int | None, str | None]],
) -> DeliveryRound:
    done = DeliveryRound()
    now = datetime.now(UTC)

    async def write(conn: asyncpg.Connection) -> None:
        for delivery, (status, error) in zip(claimed, outcomes, strict=True):
            if error is None:
                await conn.execute(_DONE_SQL, delivery.id, status)
                done.delivered += 1
                continue
            tries = delivery.attempts + 1
            dead = tries >= policy.max_attempts
            retry_at = now + timedelta(seconds=backoff_seconds(policy, tries))
            state = "dead" if dead else "pending"
            await conn.execute(_FAILED_SQL, delivery.id, state, status, error, retry_at)
            done.dead += dead
            done.retried += not dead
            log.warning(
                "webhook delivery %s to %s failed (%s), try %d of %d%s",
                delivery.id, redact_url(delivery.url), error, tries, policy.max_attempts,
                ": dead" if dead else "",
            )  # fmt: skip

    await in_transaction(ledger.pool, write)
    for outcome, n in (("delivered", done.delivered), ("retry", done.retried), ("dead", done.dead)):
        if n:
            metrics.WEBHOOK_DELIVERIES.labels(outcome).inc(n)
    return done


_DELIVERY_COLUMNS = (
    "id, endpoint_id, alert_id, event, status, attempts, next_attempt_at, last_status, "
    "last_error, delivered_at"
)


async def list_deliveries(
    ledger: Ledger, *, status: str | None = None, limit: int = 50
) -> list[Delivery]:
    """Deliveries newest first, of one status or all."""
    sql = (
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries"
        " WHERE ($1::text IS NULL OR status = $1) ORDER BY created_at DESC, id LIMIT $2"
    )

    async def read(conn: asyncpg.Connection) -> list[Delivery]:
        return [Delivery(**dict(r)) for r in await conn.fetch(sql, status, limit)]

    return await in_transaction(ledger.pool, read, readonly=True)


async def redeliver(
    ledger: Ledger, delivery_ids: Sequence[str] = (), *, all_dead: bool = False
) -> int:
    """Send these deliveries (or every dead one) again from the first try; how many."""
    sql = (
        "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(),"
        " delivered_at = NULL WHERE (id = ANY($1::text[]) OR ($2 AND status = 'dead'))"
    )

    async def write(conn: asyncpg.Connection) -> int:
        result: str = await conn.execute(sql, list(delivery_ids), all_dead)
        return int(result.split()[-1])

    return await in_transaction(ledger.pool, write)
