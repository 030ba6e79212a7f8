"""Reserve at the hook, settle after the response: the hook holds a reserve route's estimate
and answers its hold id; ``POST /v1/holds/{hold_id}/settle`` charges the actual cost."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from tests.api.helpers import account, assert_problem, bearer, create_account
from tests.support.gateway import GatewayServer, gateway_settings, running_gateway

from quotagate import ids
from quotagate.api import access
from quotagate.config import parse_config

RESERVE = """
opening_grant = true
default_tier = "pro"
[resources]
api_call = 1
token = 2
[tiers.pro]
credit_limit = 1000
monthly_grant = 1000
[holds]
min_ttl_seconds = 1
[[authz.routes]]
method = "POST"
path = "/api/chat/*"
mode = "reserve"
cost = 30
max_overrun = 10
hold_ttl = "1m"
[[authz.routes]]
path = "/api/tokens/*"
mode = "reserve"
resource = "token"
units = 10
on_expiry = "capture"
[[authz.routes]]
path = "/api/*"
resource = "api_call"
"""
"""A fixed estimate of 30 credits (10 more allowed), 10 tokens at 2, and a charge route."""


@pytest.fixture(scope="module")
def reserve_gateway(
    redis_url: str, migrated_database_url: str, gateway_prefix: str
) -> Iterator[GatewayServer]:
    settings = gateway_settings(redis_url, migrated_database_url, gateway_prefix + ":r")
    with running_gateway(settings, parse_config(RESERVE)) as server:
        yield server


@pytest.fixture
def client(reserve_gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=reserve_gateway.url, timeout=10) as http:
        yield http


def _hook(
    api_keys: dict[str, str], acct: str, method: str, uri: str, **extra: str
) -> dict[str, str]:
    return {
        "X-Quotagate-Key": api_keys["hook"], "X-Account-Id": acct,
        "X-Original-Method": method, "X-Original-URI": uri,
        **{k.replace("_", "-"): v for k, v in extra.items()},
    }  # fmt: skip


def _settle(
    http: httpx.Client, key: str, hold_id: str, body: object, **headers: str
) -> httpx.Response:
    named = {k.replace("_", "-"): v for k, v in headers.items()}
    return http.post(f"/v1/holds/{hold_id}/settle", json=body, headers={**bearer(key), **named})


def _books(http: httpx.Client, admin: str, acct: str) -> tuple[int, int, int]:
    view = account(http, admin, acct)
    return view["balance"], view["reserved"], view["available"]


def test_a_reserve_route_holds_its_estimate(client: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(client, api_keys["admin"])
    r = client.get("/v1/authz", headers=_hook(api_keys, acct, "POST", "/api/chat/1"))
    assert r.status_code == 200, r.text
    assert (r.headers["x-quota-account"], r.headers["x-quota-held"]) == (acct, "30")
    assert r.headers["x-quota-remaining"] == "970"
    assert "x-quota-cost" not in r.headers
    assert ids.split_account_hold_id(r.headers["x-quota-hold-id"])[0] == acct
    assert _books(client, api_keys["admin"], acct) == (1000, 30, 970)


@pytest.mark.parametrize(
    ("actual", "charged", "shortfall"),
    [(12, 12, 0), (30, 30, 0), (38, 38, 0), (55, 40, 15)],
    ids=["smaller", "equal", "larger", "past-overrun"],
)
def test_the_upstream_settles_the_actual_cost(
    client: httpx.Client, api_keys: dict[str, str], actual: int, charged: int, shortfall: int
) -> None:
    acct = create_account(client, api_keys["admin"])
    hook = client.get("/v1/authz", headers=_hook(api_keys, acct, "POST", "/api/chat/1"))
    hold_id = hook.headers["x-quota-hold-id"]
    r = _settle(client, api_keys["service"], hold_id, {"amount": actual}, Idempotency_Key="k")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["charged"], body["shortfall"], body["released"]) == (
        charged, shortfall, 30 - min(charged, 30),
    )  # fmt: skip
    assert (body["balance"], body["remaining"]) == (1000 - charged, 1000 - charged)
    again = _settle(client, api_keys["service"], hold_id, {"amount": actual}, Idempotency_Key="k")
    assert again.json() == body and again.headers["idempotent-replayed"] == "true"
    assert _books(client, api_keys["admin"], acct) == (1000 - charged, 0, 1000 - charged)
    assert_problem(
        _settle(client, api_keys["service"], hold_id, {"amount": 1}), 409, "hold_settled"
    )


def test_units_are_priced_as_the_route_prices_them(
    client: httpx.Client, api_keys: dict[str, str]
) -> None:
    acct = create_account(client, api_keys["admin"])
    hook = client.get("/v1/authz", headers=_hook(api_keys, acct, "GET", "/api/tokens/x"))
    assert hook.headers["x-quota-held"] == "20"
    r = _settle(client, api_keys["service"], hook.headers["x-quota-hold-id"], {"units": 7})
    assert (r.json()["charged"], r.json()["released"]) == (14, 6)
    chat = client.get("/v1/authz", headers=_hook(api_keys, acct, "POST", "/api/chat/1"))
    r = _settle(client, api_keys["service"], chat.headers["x-quota-hold-id"], {"units": 1})
    assert_problem(r, 422, "units_not_priced")


def test_the_proxy_may_ask_for_a_reservation(
    client: httpx.Client, api_keys: dict[str, str]
) -> None:
    acct = create_account(client, api_keys["admin"])
    r = client.get(
        "/v1/authz", headers=_hook(api_keys, acct, "GET", "/api/x", X_Quota_Mode="reserve")
    )
    assert r.headers["x-quota-held"] == "1" and "x-quota-hold-id" in r.headers
    named = _hook(
        api_keys, acct, "GET", "/static/x",
        X_Quota_Mode="reserve", X_Quota_Resource="token", X_Quota_Units="4",
    )  # fmt: skip
    assert client.get("/v1/authz", headers=named).headers["x-quota-held"] == "8"
    charged = client.get("/v1/authz", headers=_hook(api_keys, acct, "GET", "/api/x"))
    assert charged.headers["x-quota-cost"] == "1" and "x-quota-hold-id" not in charged.headers
    plain = client.get("/v1/authz", headers=_hook(api_keys, acct, "POST", "/api/chat/1",
                                                  X_Quota_Mode="charge"))  # fmt: skip
    assert_problem(plain, 422, "invalid_request")
    bad = client.get("/v1/authz", headers=_hook(api_keys, acct, "GET", "/api/x", X_Quota_Mode="x"))
    assert_problem(bad, 422, "invalid_request")
    # A reserve route priced by a resource can be charged its price instead (10 tokens at 2).
    tokens = client.get(
        "/v1/authz", headers=_hook(api_keys, acct, "GET", "/api/tokens/x", X_Quota_Mode="charge")
    )
    assert tokens.headers["x-quota-cost"] == "20" and "x-quota-hold-id" not in tokens.headers
    assert _books(client, api_keys["admin"], acct) == (979, 9, 970)


def test_a_reservation_the_credits_cannot_cover_is_refused(
    client: httpx.Client, api_keys: dict[str, str]
) -> None:
    acct = create_account(client, api_keys["admin"])
    big = _hook(api_keys, acct, "GET", "/x", X_Quota_Mode="reserve", X_Quota_Resource="token",
                X_Quota_Units="490")  # fmt: skip
    assert client.get("/v1/authz", headers=big).status_code == 200
    r = client.get("/v1/authz", headers=_hook(api_keys, acct, "POST", "/api/chat/1"))
    assert_problem(r, 402, "insufficient_credits")
    assert _books(client, api_keys["admin"], acct) == (1000, 980, 20)


def test_a_retried_hook_call_holds_once(client: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(client, api_keys["admin"])
    headers = _hook(api_keys, acct, "POST", "/api/chat/1", X_Request_Id="req-1")
    first, again = (client.get("/v1/authz", headers=headers) for _ in range(2))
    assert first.headers["x-quota-hold-id"] == again.headers["x-quota-hold-id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert _books(client, api_keys["admin"], acct) == (1000, 30, 970)


@pytest.mark.parametrize("scope", ["read", "hook"])
def test_only_a_service_key_settles(
    client: httpx.Client, api_keys: dict[str, str], scope: str
) -> None:
    acct = create_account(client, api_keys["admin"])
    hold_id = client.get("/v1/authz", headers=_hook(api_keys, acct, "POST", "/api/chat/1")).headers[
        "x-quota-hold-id"
    ]
    assert_problem(_settle(client, api_keys[scope], hold_id, {"amount": 1}), 403, "forbidden")
    no_key = client.post(f"/v1/holds/{hold_id}/settle", json={"amount": 1})
    assert_problem(no_key, 401, "unauthorized")
    assert _books(client, api_keys["admin"], acct) == (1000, 30, 970)


def test_bad_settles_are_clear_problems(client: httpx.Client, api_keys: dict[str, str]) -> None:
    service = api_keys["service"]
    acct = create_account(client, api_keys["admin"])
    hold_id = client.get("/v1/authz", headers=_hook(api_keys, acct, "POST", "/api/chat/1")).headers[
        "x-quota-hold-id"
    ]
    for body in ({}, {"amount": 1, "units": 1}, {"other": 1}):
        assert_problem(_settle(client, service, hold_id, body), 422, "invalid_request")
    for bad in ({"amount": -1}, {"amount": 1.5}, {"units": "3"}):
        assert_problem(_settle(client, service, hold_id, bad), 422, "invalid_amount")
    assert_problem(_settle(client, service, "not-a-hold", {"amount": 1}), 422, "invalid_request")
    unknown = ids.account_hold_id(acct, ids.new_id())
    assert_problem(_settle(client, service, unknown, {"amount": 1}), 404, "hold_not_found")
    _, hold_uuid = ids.split_account_hold_id(hold_id)
    other = create_account(client, api_keys["admin"])
    forged = ids.account_hold_id(other, hold_uuid)
    assert_problem(_settle(client, service, forged, {"amount": 1}), 404, "hold_not_found")
    assert _books(client, api_keys["admin"], acct) == (1000, 30, 970)
    assert _settle(client, service, hold_id, {"amount": 0}).json()["released"] == 30
    assert _books(client, api_keys["admin"], acct) == (1000, 0, 1000)


def test_a_settles_access_line_names_its_account_and_what_it_charged(
    client: httpx.Client, api_keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=access.ACCESS_LOGGER.name)
    acct = create_account(client, api_keys["admin"])
    hook = client.get("/v1/authz", headers=_hook(api_keys, acct, "POST", "/api/chat/1"))
    caplog.clear()
    assert _settle(client, api_keys["service"], hook.headers["x-quota-hold-id"], {"amount": 12})
    [line] = [r.__dict__ for r in caplog.records if r.name == access.ACCESS_LOGGER.name]
    assert (line["route"], line["account"], line["decision"], line["cost"]) == (
        "settle", acct, "allowed", 12,
    )  # fmt: skip
