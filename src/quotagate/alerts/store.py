"""Alerts in PostgreSQL: raised once each, announced (counter, log line), queued for webhooks.

An alert is written with its ``dedupe_key`` (ON CONFLICT DO NOTHING): a batch the flush reads
twice, or two checks of one month's expiry, raise it once. In the same transaction each
endpoint subscribed to its kind gets a pending delivery, with the exact JSON body it will be
sent (``quotagate.alerts.webhooks`` sends them). Only once that commits is the alert counted
and logged.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from quotagate import metrics
from quotagate.ledger.ledger import Ledger
from quotagate.ledger.postgres import in_transaction

log = logging.getLogger("quotagate.alerts")

KINDS = ("balance_below", "credits_expiring", "unusual_consumption")
"""Every kind of alert, which is also its webhook event type."""


@dataclass(frozen=True, slots=True)
class NewAlert:
    kind: str
    account_id: str
    rule: str
    dedupe_key: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    kind: str
    account_id: str
    rule: str
    details: dict[str, Any]
    created_at: datetime


_INSERT_SQL = """
INSERT INTO alerts (kind, account_id, rule, dedupe_key, details)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING id, kind, account_id, rule, details::text AS details, created_at
"""

_ENDPOINTS_SQL = """
SELECT id, events FROM webhook_endpoints WHERE disabled_at IS NULL
"""

_DELIVERY_SQL = """
INSERT INTO webhook_deliveries (id, endpoint_id, alert_id, event, payload)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[])
"""


def _alert(row: asyncpg.Record) -> Alert:
    details = row["details"]
    return Alert(
        id=row["id"],
        kind=row["kind"],
        account_id=row["account_id"],
        rule=row["rule"],
        details=json.loads(details) if isinstance(details, str) else dict(details),
        created_at=row["created_at"],
    )


def payload(alert: Alert) -> str:
    """The webhook body: Standard Webhooks' ``type``, ``timestamp`` and ``data``."""
    data = {
        "alert_id": alert.id, "account_id": alert.account_id, "rule": alert.rule,
        **alert.details,
    }  # fmt: skip
    body = {"type": alert.kind, "timestamp": alert.created_at.isoformat(), "data": data}
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


async def insert_alerts(conn: asyncpg.Connection, new: Sequence[NewAlert]) -> list[Alert]:
    """Write the alerts not raised before, and their deliveries, in the caller's transaction."""
    if not new:
        return []
    columns = (
        [a.kind for a in new], [a.account_id for a in new], [a.rule for a in new],
        [a.dedupe_key for a in new], [json.dumps(a.details) for a in new],
    )  # fmt: skip
    raised = [_alert(r) for r in await conn.fetch(_INSERT_SQL, *columns)]
    if raised:
        await _queue_deliveries(conn, raised)
    return raised


async def _queue_deliveries(conn: asyncpg.Connection, raised: Sequence[Alert]) -> None:
    endpoints = await conn.fetch(_ENDPOINTS_SQL)
    rows: list[tuple[str, str, int, str, str]] = []
    for alert in raised:
        body = payload(alert)
        for endpoint in endpoints:
            if alert.kind in endpoint["events"] or "*" in endpoint["events"]:
                rows.append((f"msg_{uuid.uuid4().hex}", endpoint["id"], alert.id, alert.kind, body))
    if rows:
        await conn.execute(_DELIVERY_SQL, *(list(column) for column in zip(*rows, strict=True)))


def announce(raised: Sequence[Alert]) -> None:
    """Count and log alerts that are committed."""
    for alert in raised:
        metrics.ALERTS.labels(alert.kind).inc()
        fields = " ".join(f"{k}={_logfmt(v)}" for k, v in sorted(alert.details.items()))
        log.warning(
            "alert kind=%s account=%s alert_id=%d rule=%s %s",
            alert.kind, _logfmt(alert.account_id), alert.id, _logfmt(alert.rule), fields,
        )  # fmt: skip


def _logfmt(value: object) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "._:@-/%=*" for c in text):
        return text
    return json.dumps(text)


async def list_alerts(
    ledger: Ledger,
    *,
    limit: int = 50,
    before: int | None = None,
    account_id: str | None = None,
    kind: str | None = None,
) -> list[Alert]:
    """Alerts newest first, optionally of one account or kind, before alert id ``before``."""
    sql = (
        "SELECT id, kind, account_id, rule, details::text AS details, created_at FROM alerts"
        " WHERE ($1::bigint IS NULL OR id < $1) AND ($2::text IS NULL OR account_id = $2)"
        " AND ($3::text IS NULL OR kind = $3) ORDER BY id DESC LIMIT $4"
    )

    async def read(conn: asyncpg.Connection) -> list[Alert]:
        return [_alert(r) for r in await conn.fetch(sql, before, account_id, kind, limit)]

    return await in_transaction(ledger.pool, read, readonly=True)
