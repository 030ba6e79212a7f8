"""The reverse-proxy hook (/v1/authz) and /v1/me, as nginx, Traefik and Envoy call them."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from tests.api.helpers import account, assert_problem, create_account
from tests.support.gateway import (
    GatewayServer,
    gateway_settings,
    new_account_id,
    running_gateway,
)

from quotagate.config import parse_config


def hook_headers(api_keys: dict[str, str], acct: str | None, **extra: str) -> dict[str, str]:
    headers = {
        "X-Quotagate-Key": api_keys["hook"],
        **{k.replace("_", "-"): v for k, v in extra.items()},
    }
    if acct is not None:
        headers["X-Account-Id"] = acct
    return headers


def test_allowed_with_explicit_resource(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"], tier="free")
    r = http.get(
        "/v1/authz",
        headers=hook_headers(api_keys, acct, X_Quota_Resource="premium_feature", X_Quota_Units="3"),
    )
    assert r.status_code == 200
    assert r.headers["x-quota-account"] == acct
    assert (r.headers["x-quota-cost"], r.headers["x-quota-remaining"]) == ("15", "85")
    # The free tier has a request rate: its window travels in RateLimit-* headers.
    assert r.headers["ratelimit-limit"] == "40"
    assert r.headers["ratelimit-remaining"] == "39"
    assert "ratelimit-reset" in r.headers
    assert "x-quota-reason" not in r.headers
    enterprise = create_account(http, api_keys["admin"], tier="enterprise")
    r = http.get(
        "/v1/authz", headers=hook_headers(api_keys, enterprise, X_Quota_Resource="api_call")
    )
    assert r.status_code == 200 and "ratelimit-limit" not in r.headers


@pytest.mark.parametrize(
    ("headers", "method", "path", "cost"),
    [
        (
            {"X-Original-Method": "POST", "X-Original-URI": "/api/chat/42?stream=1"},
            "GET",
            "/v1/authz",
            1,
        ),
        (
            {"X-Original-Method": "GET", "X-Original-URI": "/api/premium/report"},
            "GET",
            "/v1/authz",
            5,
        ),
        ({"X-Forwarded-Method": "POST", "X-Forwarded-Uri": "/api/files"}, "GET", "/v1/authz", 2),
        (
            {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/users?page=2"},
            "GET",
            "/v1/authz",
            1,
        ),
        ({}, "POST", "/v1/authz/api/files", 2),
        ({}, "DELETE", "/v1/authz/api/premium/x", 5),
        ({}, "PATCH", "/v1/authz/api/other", 1),
        ({}, "HEAD", "/v1/authz/api/chat/1", 1),
        ({}, "GET", "/v1/authz/api/chat/1", 1),  # routes match on method: GET is an api_call
    ],
)
def test_route_table_from_each_proxy_style(
    http: httpx.Client,
    api_keys: dict[str, str],
    headers: dict[str, str],
    method: str,
    path: str,
    cost: int,
) -> None:
    acct = create_account(http, api_keys["admin"])
    r = http.request(method, path, headers={**hook_headers(api_keys, acct), **headers})
    assert r.status_code == 200, r.text
    assert r.headers["x-quota-cost"] == str(cost)
    assert r.headers["x-quota-remaining"] == str(1000 - cost)
    assert account(http, api_keys["admin"], acct)["balance"] == 1000 - cost


def test_unmatched_is_allowed_at_cost_0(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"])
    r = http.get(
        "/v1/authz", headers={**hook_headers(api_keys, acct), "X-Original-URI": "/static/a.css"}
    )
    assert r.status_code == 200
    assert (r.headers["x-quota-cost"], r.headers["x-quota-remaining"]) == ("0", "1000")
    # Even at cost 0, an unknown account does not pass.
    r = http.get(
        "/v1/authz",
        headers={**hook_headers(api_keys, new_account_id()), "X-Original-URI": "/static/a.css"},
    )
    assert_problem(r, 403, "account_not_found")
    assert r.headers["x-quota-reason"] == "account_not_found"


def test_request_id_makes_retries_safe(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"])
    headers = hook_headers(api_keys, acct, X_Quota_Resource="file_upload", X_Request_Id="req-77")
    first = http.get("/v1/authz", headers=headers)
    again = http.get("/v1/authz", headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-quota-remaining"] == first.headers["x-quota-remaining"] == "998"
    assert account(http, api_keys["admin"], acct)["balance"] == 998


def test_credits_run_out_402(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"], tier="enterprise")
    http.put(
        f"/v1/accounts/{acct}", json={}, headers={"Authorization": f"Bearer {api_keys['admin']}"}
    )
    headers = hook_headers(api_keys, acct, X_Quota_Resource="premium_feature", X_Quota_Units="1999")
    assert http.get("/v1/authz", headers=headers).headers["x-quota-remaining"] == "5"
    headers["X-Quota-Units"] = "2"
    r = http.get("/v1/authz", headers=headers)
    problem = assert_problem(r, 402, "insufficient_credits")
    assert r.headers["x-quota-reason"] == "insufficient_credits"
    assert r.headers["x-quota-remaining"] == "5"
    assert (problem["required"], problem["available"]) == (10, 5)
    assert account(http, api_keys["admin"], acct)["balance"] == 5


def test_a_missing_account_header_is_titled_so(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    r = http.get("/v1/authz", headers=hook_headers(api_keys, None, X_Quota_Resource="api_call"))
    problem = assert_problem(r, 401, "unauthorized")
    assert problem["title"] == "Missing X-Account-Id header"
    assert "X-Account-Id" in problem["detail"]
    # A missing or unknown key keeps its own title.
    r = http.get("/v1/authz", headers={"X-Account-Id": "acct-1", "X-Quotagate-Key": "qg_nope"})
    assert assert_problem(r, 401, "unauthorized")["title"] == "Missing or unknown API key"


@pytest.mark.parametrize("path", ["/v1/authz", "/v1/me"])
def test_a_key_sent_as_bearer_is_told_of_x_quotagate_key(
    http: httpx.Client, api_keys: dict[str, str], path: str
) -> None:
    acct = create_account(http, api_keys["admin"])
    bearer = {"Authorization": f"Bearer {api_keys['hook']}", "X-Account-Id": acct}
    problem = assert_problem(http.get(path, headers=bearer), 401, "unauthorized")
    assert "X-Quotagate-Key" in problem["detail"] and "Authorization" in problem["detail"]
    # Without any key the message names the header too.
    problem = assert_problem(http.get(path, headers={"X-Account-Id": acct}), 401, "unauthorized")
    assert "X-Quotagate-Key" in problem["detail"]
    assert account(http, api_keys["admin"], acct)["balance"] == 1000


def test_identity_and_account_refusals(http: httpx.Client, api_keys: dict[str, str]) -> None:
    r = http.get("/v1/authz", headers=hook_headers(api_keys, None, X_Quota_Resource="api_call"))
    assert_problem(r, 401, "unauthorized")
    assert r.headers["x-quota-reason"] == "no_identity"
    r = http.get(
        "/v1/authz", headers=hook_headers(api_keys, "bad id!", X_Quota_Resource="api_call")
    )
    assert_problem(r, 403, "forbidden")
    assert r.headers["x-quota-reason"] == "unknown_account"
    r = http.get(
        "/v1/authz", headers=hook_headers(api_keys, new_account_id(), X_Quota_Resource="api_call")
    )
    assert_problem(r, 403, "account_not_found")
    banned = create_account(http, api_keys["admin"], status="banned")
    r = http.get("/v1/authz", headers=hook_headers(api_keys, banned, X_Quota_Resource="api_call"))
    assert_problem(r, 403, "account_banned")
    assert r.headers["x-quota-reason"] == "account_banned"
    r = http.get("/v1/authz", headers={"X-Account-Id": banned})
    assert_problem(r, 401, "unauthorized")
    assert r.headers["x-quota-reason"] == "unauthorized"


def test_bad_resource_headers_are_422(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"])
    r = http.get("/v1/authz", headers=hook_headers(api_keys, acct, X_Quota_Resource="gold"))
    assert_problem(r, 422, "unknown_resource")
    for units in ("0", "-1", "+1", "01", "1.5", "x", "1" * 14, "1000000000001"):
        r = http.get(
            "/v1/authz",
            headers=hook_headers(api_keys, acct, X_Quota_Resource="api_call", X_Quota_Units=units),
        )
        assert_problem(r, 422, "invalid_amount")
    assert account(http, api_keys["admin"], acct)["balance"] == 1000


def test_me(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"])
    http.get("/v1/authz", headers=hook_headers(api_keys, acct, X_Quota_Resource="api_call"))
    r = http.get("/v1/me", headers=hook_headers(api_keys, acct))
    assert r.status_code == 200
    view = r.json()
    assert (view["account_id"], view["balance"], view["available"]) == (acct, 999, 999)
    assert [t["type"] for t in view["recent_transactions"]] == ["spend", "grant"]
    assert view["recent_transactions"][0]["description"] == "GET /"
    assert r.json() == account(http, api_keys["admin"], acct)
    assert_problem(http.get("/v1/me", headers=hook_headers(api_keys, None)), 401, "unauthorized")
    r = http.get("/v1/me", headers=hook_headers(api_keys, new_account_id()))
    assert_problem(r, 404, "account_not_found")


STRICT = """
[resources]
api_call = 1
[tiers.free]
credit_limit = 3
monthly_grant = 3
rate_limit = { requests_per_second = 0.5, burst = 2 }
[tiers.big]
credit_limit = 1000
monthly_grant = 1000
[authz]
unmatched = "deny"
deny_status = 403
rate_limited_status = 403
[[authz.routes]]
path = "/api/*"
resource = "api_call"
"""


@pytest.fixture(scope="module")
def strict_gateway(
    redis_url: str, migrated_database_url: str, gateway_prefix: str
) -> Iterator[GatewayServer]:
    settings = gateway_settings(redis_url, migrated_database_url, gateway_prefix + ":s")
    with running_gateway(settings, parse_config(STRICT)) as server:
        yield server


def test_configured_deny_statuses_for_nginx(
    strict_gateway: GatewayServer, api_keys: dict[str, str]
) -> None:
    with httpx.Client(base_url=strict_gateway.url) as http:
        limited = create_account(http, api_keys["admin"], tier="free")
        answers = [
            http.get(
                "/v1/authz", headers={**hook_headers(api_keys, limited), "X-Original-URI": "/api/x"}
            )
            for _ in range(3)
        ]
        assert [r.status_code for r in answers] == [200, 200, 403]
        assert answers[2].headers["x-quota-reason"] == "rate_limited"
        assert int(answers[2].headers["retry-after"]) >= 1
        assert_problem(answers[2], 403, "rate_limited")

        poor = create_account(http, api_keys["admin"], tier="big")
        http.put(
            f"/v1/accounts/{poor}",
            json={"tier": "free"},
            headers={"Authorization": f"Bearer {api_keys['admin']}"},
        )
        headers = hook_headers(api_keys, poor, X_Quota_Resource="api_call", X_Quota_Units="1000")
        assert http.get("/v1/authz", headers=headers).status_code == 200
        r = http.get("/v1/authz", headers=headers)
        assert_problem(r, 403, "insufficient_credits")
        assert r.headers["x-quota-reason"] == "insufficient_credits"

        r = http.get(
            "/v1/authz", headers={**hook_headers(api_keys, poor), "X-Original-URI": "/static/x"}
        )
        assert_problem(r, 403, "forbidden")
        assert r.headers["x-quota-reason"] == "no_route"
