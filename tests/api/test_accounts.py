"""PUT and GET /v1/accounts/{id}, GET /v1/resources."""

from __future__ import annotations

import http.client as http_client
import json

import httpx
import pytest
from tests.api.helpers import account, assert_problem, bearer, create_account
from tests.support.gateway import (
    GatewayServer,
    delete_prefix,
    gateway_settings,
    new_account_id,
    running_gateway,
)

from quotagate import ids
from quotagate.errors import InvalidAccountId


def test_put_creates_201_then_updates_200(http: httpx.Client, api_keys: dict[str, str]) -> None:
    admin = bearer(api_keys["admin"])
    acct = new_account_id()
    r = http.put(f"/v1/accounts/{acct}", json={"tier": "pro"}, headers=admin)
    assert r.status_code == 201
    assert r.json() == {
        "account_id": acct, "created": True, "tier": "pro", "status": "active",
        "overdraft_limit": 0, "balance": 1000, "reserved": 0, "available": 1000,
        "durable": True,
    }  # fmt: skip
    r = http.put(
        f"/v1/accounts/{acct}", json={"status": "banned", "overdraft_limit": 5}, headers=admin
    )
    assert r.status_code == 200
    body = r.json()
    assert (body["created"], body["status"], body["overdraft_limit"]) == (False, "banned", 5)
    assert body["balance"] == 1000 and body["available"] == 1005


def test_put_with_empty_body_uses_defaults(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = new_account_id()
    r = http.put(f"/v1/accounts/{acct}", headers=bearer(api_keys["admin"]))
    assert r.status_code == 201
    assert (r.json()["tier"], r.json()["balance"]) == ("free", 100)


def test_put_replay_and_conflict(http: httpx.Client, api_keys: dict[str, str]) -> None:
    admin = bearer(api_keys["admin"])
    acct = new_account_id()
    headers = {**admin, "Idempotency-Key": "create-1"}
    first = http.put(f"/v1/accounts/{acct}", json={"tier": "pro"}, headers=headers)
    again = http.put(f"/v1/accounts/{acct}", json={"tier": "pro"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert account(http, api_keys["admin"], acct)["balance"] == 1000  # one opening grant
    other = http.put(f"/v1/accounts/{acct}", json={"tier": "free"}, headers=headers)
    assert_problem(other, 409, "idempotency_conflict")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"tier": "platinum"}, "unknown_tier"),
        ({"status": "frozen"}, "invalid_request"),
        ({"overdraft_limit": -1}, "invalid_amount"),
        ({"overdraft_limit": 1.5}, "invalid_amount"),
        ({"overdraft_limit": "5"}, "invalid_amount"),
        ({"overdraft_limit": True}, "invalid_amount"),
        ({"overdraft_limit": 10**12 + 1}, "invalid_amount"),
        ({"colour": "blue"}, "invalid_request"),
        ([], "invalid_request"),
    ],
)
def test_put_bad_body_writes_nothing(
    http: httpx.Client, api_keys: dict[str, str], body: object, code: str
) -> None:
    admin = bearer(api_keys["admin"])
    acct = new_account_id()
    assert_problem(http.put(f"/v1/accounts/{acct}", json=body, headers=admin), 422, code)
    assert_problem(http.get(f"/v1/accounts/{acct}", headers=admin), 404, "account_not_found")


@pytest.mark.parametrize("bad", ["a" * 129, "bad$id", "sp ace", "é"])
def test_bad_account_ids_are_422(http: httpx.Client, api_keys: dict[str, str], bad: str) -> None:
    admin = bearer(api_keys["admin"])
    r = http.put(f"/v1/accounts/{bad}", json={}, headers=admin)
    assert_problem(r, 422, "invalid_request")
    assert_problem(http.get(f"/v1/accounts/{bad}", headers=admin), 422, "invalid_request")


def test_malformed_json_is_422(http: httpx.Client, api_keys: dict[str, str]) -> None:
    r = http.put(
        f"/v1/accounts/{new_account_id()}",
        content=b'{"tier": ',
        headers={**bearer(api_keys["admin"]), "Content-Type": "application/json"},
    )
    assert_problem(r, 422, "invalid_request")


def test_get_account_view(http: httpx.Client, api_keys: dict[str, str]) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    for i in range(12):
        r = http.post(
            f"/v1/accounts/{acct}/consume",
            json={"resource": "api_call", "description": f"call {i}"},
            headers=bearer(api_keys["service"]),
        )
        assert r.status_code == 200
    r = http.post(
        f"/v1/accounts/{acct}/holds", json={"amount": 7}, headers=bearer(api_keys["service"])
    )
    assert r.status_code == 201
    view = account(http, api_keys["read"], acct)
    assert set(view) == {
        "account_id", "tier", "status", "balance", "reserved", "available", "overdraft_limit",
        "last_reset_at", "recent_transactions", "buckets", "holds", "grants", "next_expiry",
        "membership",
    }  # fmt: skip
    assert view["membership"] is None  # not a member of a pool
    assert (view["balance"], view["reserved"], view["available"]) == (988, 7, 981)
    assert view["buckets"] == {"monthly": 988, "purchased": 0}
    assert [(g["id"], g["remaining"]) for g in view["grants"]] == [("monthly", 988)]
    assert view["next_expiry"] is None  # a monthly grant under renewal = "add" never expires
    assert [(h["hold_id"], h["amount"]) for h in view["holds"]] == [(r.json()["hold_id"], 7)]
    recent = view["recent_transactions"]
    assert len(recent) == 10
    assert [t["description"] for t in recent] == [f"call {i}" for i in range(11, 1, -1)]
    assert all(t["amount"] == -1 and t["type"] == "spend" for t in recent)
    assert view["last_reset_at"] is not None


def test_get_unknown_account_is_404(http: httpx.Client, api_keys: dict[str, str]) -> None:
    r = http.get(f"/v1/accounts/{new_account_id()}", headers=bearer(api_keys["read"]))
    assert_problem(r, 404, "account_not_found")


def test_resources(http: httpx.Client, api_keys: dict[str, str]) -> None:
    r = http.get("/v1/resources", headers=bearer(api_keys["read"]))
    assert r.status_code == 200
    assert r.json() == {
        "resources": {"ai_chat_message": 1, "file_upload": 2, "api_call": 1, "premium_feature": 5}
    }


def test_a_tier_while_redis_lost_its_data_is_503_not_an_unknown_tier(
    redis_url: str, migrated_database_url: str, key_prefix: str, api_keys: dict[str, str]
) -> None:
    settings = gateway_settings(redis_url, migrated_database_url, key_prefix)
    with running_gateway(settings) as gw, httpx.Client(base_url=gw.url) as http:
        acct = create_account(http, api_keys["admin"])
        delete_prefix(redis_url, key_prefix)  # Redis lost its data under a running gateway
        for account_id, body in (
            (acct, {"tier": "pro"}),
            (new_account_id(), {"tier": "free", "status": "banned"}),
            (new_account_id(), {}),
        ):
            r = http.put(f"/v1/accounts/{account_id}", json=body, headers=bearer(api_keys["admin"]))
            assert_problem(r, 503, "account_not_loaded")


def test_a_405_on_an_account_allows_both_its_methods(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    r = http.post(f"/v1/accounts/{new_account_id()}", headers=bearer(api_keys["admin"]))
    assert_problem(r, 405, "method_not_allowed")
    assert sorted(m.strip() for m in r.headers["allow"].split(",")) == ["GET", "HEAD", "PUT"]


@pytest.mark.parametrize("account_id", [".", "..", "...", "alice.", "a" * 128 + "."])
def test_ids_a_url_path_would_resolve_or_strip_are_refused(
    gateway: GatewayServer, http: httpx.Client, api_keys: dict[str, str], account_id: str
) -> None:
    # Sent exactly as written: httpx would resolve the dot segments itself.
    for method in ("PUT", "GET"):
        connection = http_client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        try:
            connection.request(
                method, f"/v1/accounts/{account_id}", body=b"{}", headers=bearer(api_keys["admin"])
            )
            response = connection.getresponse()
            status, problem = response.status, json.loads(response.read())
        finally:
            connection.close()
        assert (status, problem["code"], problem["field"]) == (422, "invalid_request", "account_id")
    assert ids.check_account_id("a.b") == "a.b"
    with pytest.raises(InvalidAccountId):
        ids.check_account_id(account_id)
