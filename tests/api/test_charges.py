"""check and consume; 402 and 429 as problems; RateLimit-* headers."""

from __future__ import annotations

import httpx
import pytest
from tests.api.helpers import assert_problem, balance, bearer, create_account
from tests.support.gateway import gateway_settings, new_account_id, running_gateway

from quotagate.config import parse_config


def test_check_reads_only(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"], tier="free")
    url = f"/v1/accounts/{acct}/check"
    r = http.post(
        url, json={"resource": "premium_feature", "units": 3}, headers=bearer(api_keys["service"])
    )
    assert r.status_code == 200
    assert r.json() == {"allowed": True, "cost": 15, "available": 100}
    r = http.post(
        url, json={"resource": "premium_feature", "units": 21}, headers=bearer(api_keys["service"])
    )
    assert r.json() == {"allowed": False, "cost": 105, "available": 100}
    r = http.post(url, json={"resource": "api_call"}, headers=bearer(api_keys["service"]))
    assert r.json() == {"allowed": True, "cost": 1, "available": 100}
    assert balance(http, api_keys["admin"], acct) == 100


def test_consume_until_402(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"], tier="free")
    url = f"/v1/accounts/{acct}/consume"
    service = bearer(api_keys["service"])
    r = http.post(url, json={"resource": "premium_feature", "units": 19}, headers=service)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"transaction_id", "cost", "remaining"}
    assert (body["cost"], body["remaining"]) == (95, 5)
    r = http.post(url, json={"resource": "premium_feature", "units": 2}, headers=service)
    problem = assert_problem(r, 402, "insufficient_credits")
    assert (problem["required"], problem["available"]) == (10, 5)
    assert balance(http, api_keys["admin"], acct) == 5


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"resource": "gold"}, "unknown_resource"),
        ({"resource": "api_call", "units": 0}, "invalid_amount"),
        ({"resource": "api_call", "units": -1}, "invalid_amount"),
        ({"resource": "api_call", "units": 2.0}, "invalid_amount"),
        ({"resource": "api_call", "units": "2"}, "invalid_amount"),
        ({"resource": "api_call", "units": False}, "invalid_amount"),
        ({"resource": "api_call", "units": 10**12 + 1}, "invalid_amount"),
        ({"resource": "premium_feature", "units": 10**12}, "invalid_amount"),
        ({"resource": 5}, "invalid_request"),
        ({}, "invalid_request"),
        ({"resource": "api_call", "cost": 0}, "invalid_request"),
    ],
)
def test_bad_consume_writes_nothing(
    http: httpx.Client, api_keys: dict[str, str], body: object, code: str
) -> None:
    acct = create_account(http, api_keys["admin"])
    r = http.post(f"/v1/accounts/{acct}/consume", json=body, headers=bearer(api_keys["service"]))
    assert_problem(r, 422, code)
    r = http.post(f"/v1/accounts/{acct}/check", json=body, headers=bearer(api_keys["service"]))
    assert_problem(r, 422, code)
    assert balance(http, api_keys["admin"], acct) == 1000


def test_consume_without_body_is_422(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"])
    r = http.post(f"/v1/accounts/{acct}/consume", headers=bearer(api_keys["service"]))
    assert_problem(r, 422, "invalid_request")


def test_consume_unknown_account_is_404(http: httpx.Client, api_keys: dict[str, str]) -> None:
    r = http.post(
        f"/v1/accounts/{new_account_id()}/consume",
        json={"resource": "api_call"},
        headers=bearer(api_keys["service"]),
    )
    assert_problem(r, 404, "account_not_found")


def test_banned_account_is_403(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"], status="banned")
    r = http.post(
        f"/v1/accounts/{acct}/consume",
        json={"resource": "api_call"},
        headers=bearer(api_keys["service"]),
    )
    assert_problem(r, 403, "account_banned")


def test_consume_idempotency(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"])
    url = f"/v1/accounts/{acct}/consume"
    headers = {**bearer(api_keys["service"]), "Idempotency-Key": "req-1"}
    first = http.post(url, json={"resource": "file_upload"}, headers=headers)
    again = http.post(url, json={"resource": "file_upload"}, headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert balance(http, api_keys["admin"], acct) == 998
    assert_problem(
        http.post(url, json={"resource": "api_call"}, headers=headers), 409, "idempotency_conflict"
    )


RATE_LIMITED = """
[resources]
api_call = 1
[tiers.free]
credit_limit = 100
monthly_grant = 100
rate_limit = { requests_per_second = 1, burst = 3 }
"""


def test_rate_limited_429(
    redis_url: str, migrated_database_url: str, key_prefix: str, api_keys: dict[str, str]
) -> None:
    settings = gateway_settings(redis_url, migrated_database_url, key_prefix)
    with (
        running_gateway(settings, parse_config(RATE_LIMITED)) as gw,
        httpx.Client(base_url=gw.url) as http,
    ):
        acct = create_account(http, api_keys["admin"], tier="free")
        url = f"/v1/accounts/{acct}/consume"
        service = bearer(api_keys["service"])
        answers = [http.post(url, json={"resource": "api_call"}, headers=service) for _ in range(5)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
        assert answers[0].headers["ratelimit-limit"] == "3"
        assert [r.headers["ratelimit-remaining"] for r in answers[:3]] == ["2", "1", "0"]
        problem = assert_problem(answers[3], 429, "rate_limited")
        assert int(answers[3].headers["retry-after"]) >= 1
        assert problem["retry_after_ms"] > 0
        assert balance(http, api_keys["admin"], acct) == 97
