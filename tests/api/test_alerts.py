"""GET /v1/alerts and the webhook endpoints' API: pages, filters, a secret shown once, 404s
and 422s."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
from tests.api.helpers import assert_problem, bearer, create_account

from quotagate.alerts.store import NewAlert, insert_alerts


def _raise(database_url: str, account: str, n: int) -> None:
    async def write() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                await insert_alerts(conn, [
                    NewAlert("balance_below", account, "api-test", f"api-test|{uuid.uuid4()}",
                             {"balance": i})
                    for i in range(n)
                ])  # fmt: skip
        finally:
            await conn.close()

    asyncio.run(write())


def test_alerts_page_newest_first_by_account(
    http: httpx.Client, api_keys: dict[str, str], migrated_database_url: str
) -> None:
    admin = bearer(api_keys["admin"])
    acct = create_account(http, api_keys["admin"])
    _raise(migrated_database_url, acct, 5)
    first = http.get("/v1/alerts", params={"account_id": acct, "limit": 3}, headers=admin).json()
    assert [a["details"]["balance"] for a in first["alerts"]] == [4, 3, 2]
    rest = http.get(
        "/v1/alerts", params={"account_id": acct, "before": first["next"]}, headers=admin
    ).json()
    assert ([a["details"]["balance"] for a in rest["alerts"]], rest["next"]) == ([1, 0], None)
    assert {a["kind"] for a in rest["alerts"]} == {"balance_below"}
    none = http.get(
        "/v1/alerts", params={"account_id": acct, "kind": "credits_expiring"}, headers=admin
    )
    assert none.json() == {"alerts": [], "next": None}
    for params in ({"kind": "loud"}, {"limit": "0"}, {"account_id": "bad id"}, {"x": "1"}):
        assert_problem(http.get("/v1/alerts", params=params, headers=admin), 422, "invalid_request")


def test_webhook_endpoints_over_the_api(http: httpx.Client, api_keys: dict[str, str]) -> None:
    admin = bearer(api_keys["admin"])
    body = {"url": "https://receiver.example/hook", "events": ["unusual_consumption"]}
    made = http.post("/v1/webhooks", json=body, headers=admin)
    assert made.status_code == 201, made.text
    created = made.json()
    assert created["secret"].startswith("whsec_")
    listed = http.get("/v1/webhooks", headers=admin).json()["webhooks"]
    mine = [w for w in listed if w["id"] == created["id"]]
    assert mine == [{k: v for k, v in created.items() if k != "secret"}]
    assert created["secret"] not in http.get("/v1/webhooks", headers=admin).text

    for bad in (
        {"url": "ftp://x/", "events": ["*"]},
        {"url": "https://x/", "events": ["nope"]},
        {"url": "https://x/", "events": []},
        {"url": "https://x/", "events": ["*"], "colour": 1},
    ):
        r = http.post("/v1/webhooks", json=bad, headers=admin)
        assert r.status_code == 422, (bad, r.text)
    redeliver = http.post("/v1/webhooks/deliveries/msg_nope/redeliver", headers=admin)
    assert_problem(redeliver, 404, "webhook_not_found")
    bad_status = http.get("/v1/webhooks/deliveries", params={"status": "lost"}, headers=admin)
    assert_problem(bad_status, 422, "invalid_request")

    assert http.delete(f"/v1/webhooks/{created['id']}", headers=admin).json() == {"deleted": True}
    gone = http.delete(f"/v1/webhooks/{created['id']}", headers=admin)
    assert_problem(gone, 404, "webhook_not_found")
