"""GET /v1/accounts/{id}/usage and GET /v1/usage: a known mix of requests, counted exactly in
/metrics and in the usage answers, per resource and window, before and after the flush."""

from __future__ import annotations

import re

import httpx
from tests.api.helpers import assert_problem, bearer, create_account
from tests.api.test_transactions import flush
from tests.support.gateway import GatewayServer

COUNTERS = (
    ("quotagate_http_requests_total", 'route="consume",status="200"'),
    ("quotagate_http_requests_total", 'route="consume",status="402"'),
    ("quotagate_http_requests_total", 'route="credits",status="200"'),
    ("quotagate_authz_decisions_total", 'decision="allowed"'),
)


def _counters(http: httpx.Client) -> dict[tuple[str, str], float]:
    text = http.get("/metrics").text
    found = {}
    for name, labels in COUNTERS:
        match = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
        found[(name, labels)] = float(match.group(1)) if match else 0.0
    return found


def _mix(http: httpx.Client, keys: dict[str, str], acct: str) -> None:
    """On a free account (100 credits): 7 api_call, 2 x 3 file_upload (12), 2 premium_feature
    x 20 refused (100 > 81), a grant of 50, and 4 ai_chat_message through the hook."""
    service = bearer(keys["service"])
    url = f"/v1/accounts/{acct}"
    for _ in range(7):
        assert http.post(
            f"{url}/consume", json={"resource": "api_call"}, headers=service
        ).is_success
    for _ in range(2):
        r = http.post(
            f"{url}/consume", json={"resource": "file_upload", "units": 3}, headers=service
        )
        assert r.status_code == 200, r.text
    for _ in range(2):
        r = http.post(
            f"{url}/consume", json={"resource": "premium_feature", "units": 20}, headers=service
        )
        assert_problem(r, 402, "insufficient_credits")
    r = http.post(
        f"{url}/credits", json={"amount": 50, "type": "grant"}, headers=bearer(keys["admin"])
    )
    assert r.status_code == 200, r.text
    hook = {"X-Quotagate-Key": keys["hook"], "X-Account-Id": acct}
    for _ in range(4):
        r = http.get("/v1/authz", headers={**hook, "X-Quota-Resource": "ai_chat_message"})
        assert r.status_code == 200, r.text


def _usage(http: httpx.Client, key: str, acct: str, window: str) -> dict[str, object]:
    r = http.get(f"/v1/accounts/{acct}/usage", params={"window": window}, headers=bearer(key))
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def _by_resource(body: dict[str, object]) -> dict[str | None, tuple[int, int, int, int, int]]:
    rows = body["rows"]
    assert isinstance(rows, list) and len(rows) == len({r["resource"] for r in rows})
    return {
        r["resource"]: (r["spent"], r["granted"], r["units"], r["transactions"], r["pending"])
        for r in rows
    }


def test_a_known_mix_is_counted_exactly_in_metrics_and_usage(
    gateway: GatewayServer, http: httpx.Client, api_keys: dict[str, str],
    redis_url: str, migrated_database_url: str,
) -> None:  # fmt: skip
    acct = create_account(http, api_keys["admin"], tier="free")
    before = _counters(http)
    _mix(http, api_keys, acct)
    after = _counters(http)
    assert [after[c] - before[c] for c in COUNTERS] == [9, 2, 1, 4]

    # Written through: the opening grant and the grant. Pending: the 13 spends.
    expected = {
        None: (0, 150, 0, 2, 0),
        "api_call": (7, 0, 7, 7, 7),
        "file_upload": (12, 0, 6, 2, 2),
        "ai_chat_message": (4, 0, 4, 4, 4),
    }
    for window in ("hour", "day", "month"):
        body = _usage(http, api_keys["read"], acct, window)
        assert (body["window"], body["group_by"], body["pending"]) == (window, "resource", 13)
        assert _by_resource(body) == expected
    flush(gateway, redis_url, migrated_database_url)
    flushed = {resource: (*row[:4], 0) for resource, row in expected.items()}
    for window in ("hour", "day", "month"):
        body = _usage(http, api_keys["service"], acct, window)
        assert body["pending"] == 0
        assert _by_resource(body) == flushed

    everyone = http.get(
        "/v1/usage",
        params={"group_by": "account", "limit": 1000},
        headers=bearer(api_keys["admin"]),
    )
    assert everyone.status_code == 200, everyone.text
    mine = [r for r in everyone.json()["rows"] if r["account_id"] == acct]
    assert [(r["resource"], r["spent"], r["granted"], r["transactions"]) for r in mine] == [
        (None, 23, 150, 15)
    ]


def test_bad_queries_are_422_and_unknown_accounts_404(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    acct = create_account(http, api_keys["admin"])
    read, admin = bearer(api_keys["read"]), bearer(api_keys["admin"])
    for params in (
        {"window": "week"},
        {"from": "soon"},
        {"from": "2026-12-02", "to": "2026-12-01"},
        {"from": "2020-01-01", "window": "hour"},
        {"colour": "blue"},
        {"group_by": "resource"},  # only the all-accounts form groups
    ):
        r = http.get(f"/v1/accounts/{acct}/usage", params=params, headers=read)
        assert_problem(r, 422, "invalid_request")
    for params in ({"group_by": "tier"}, {"limit": "0"}, {"limit": "1001"}, {"limit": "x"}):
        assert_problem(http.get("/v1/usage", params=params, headers=admin), 422, "invalid_request")
    assert_problem(
        http.get("/v1/accounts/acct-nobody/usage", headers=read), 404, "account_not_found"
    )
    assert_problem(http.get("/v1/accounts/bad%20id/usage", headers=read), 422, "invalid_request")
