"""No API key or webhook secret in any log line: keys refused, revoked and accepted, a webhook
endpoint whose deliveries fail (the URL's query, its token, stays out too), everything logged
at every level."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from tests.alerts.receiver import receiver
from tests.api.helpers import bearer, create_account
from tests.support.secret_watch import SECRET, WATCH

from quotagate.alerts.store import NewAlert, insert_alerts
from quotagate.alerts.webhooks import deliver_due
from quotagate.config import Webhooks
from quotagate.ledger import Ledger


def test_keys_and_webhook_secrets_never_reach_a_log_line(
    http: httpx.Client,
    api_keys: dict[str, str],
    migrated_database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    near = admin[:-2] + "xx"
    for key in (near, "qg_0123456789abcdef_" + "y" * 43, api_keys["read"], api_keys["hook"]):
        http.post(
            f"/v1/accounts/{acct}/consume", json={"resource": "api_call"}, headers=bearer(key)
        )
        http.get("/v1/authz", headers={"X-Quotagate-Key": key, "X-Account-Id": acct})
    with receiver(fail_first=10) as hook:
        made = http.post(
            "/v1/webhooks", json={"url": hook.url, "events": ["*"]}, headers=bearer(admin)
        )
        assert made.status_code == 201, made.text
        secret = made.json()["secret"]
        asyncio.run(_fail_one_delivery(migrated_database_url, acct))
        assert len(hook.requests) == 1
    http.delete(f"/v1/webhooks/{made.json()['id']}", headers=bearer(admin))

    text = caplog.text
    assert "webhook delivery" in text  # the failure was logged ...
    for secret_text in (*api_keys.values(), near, secret, "token=not-in-logs"):
        assert secret_text not in text  # ... without the secret or the URL's query
    assert SECRET.findall(text) == []
    assert WATCH.found == []


async def _fail_one_delivery(database_url: str, account: str) -> None:
    ledger = await Ledger.connect(database_url)
    try:
        async with ledger.pool.acquire() as conn, conn.transaction():
            await insert_alerts(conn, [NewAlert("balance_below", account, "log-test",
                                                f"log-test|{account}", {})])  # fmt: skip
        await deliver_due(ledger, Webhooks(timeout_ms=1000))
    finally:
        await ledger.aclose()
