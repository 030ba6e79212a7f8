"""/healthz, /readyz, /metrics, /openapi.json, and problems for unknown routes and methods."""

from __future__ import annotations

import httpx
from tests.api.helpers import assert_problem, bearer, create_account


def test_healthz(http: httpx.Client) -> None:
    r = http.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_readyz(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"])
    http.post(
        f"/v1/accounts/{acct}/consume",
        json={"resource": "api_call"},
        headers=bearer(api_keys["service"]),
    )
    r = http.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert (body["ready"], body["redis"], body["postgres"]) == (True, "ok", "ok")
    lag = body["outbox_lag"]
    assert lag["total"] >= 1 and lag["oldest_age_seconds"] >= 0
    assert sum(lag["partitions"].values()) == lag["total"]


def test_metrics(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"])
    for _ in range(3):
        http.post(
            f"/v1/accounts/{acct}/consume",
            json={"resource": "api_call"},
            headers=bearer(api_keys["service"]),
        )
    http.post(
        f"/v1/accounts/{acct}/consume", json={"resource": "x"}, headers=bearer(api_keys["service"])
    )
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()

    def value(prefix: str) -> float:
        return float(next(line for line in lines if line.startswith(prefix)).split()[-1])

    assert value('quotagate_http_requests_total{route="consume",status="200"}') >= 3
    assert value('quotagate_http_requests_total{route="consume",status="422"}') >= 1
    assert value('quotagate_write_through_total{result="ok"}') >= 1
    assert value("quotagate_outbox_entries ") >= 3
    assert value("quotagate_api_keys_cache_age_seconds ") < 10
    assert any(line.startswith("quotagate_http_request_duration_seconds_bucket") for line in lines)


def test_openapi_describes_every_endpoint(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    expected = {
        ("put", "/v1/accounts/{account_id}"), ("get", "/v1/accounts/{account_id}"),
        ("post", "/v1/accounts/{account_id}/credits"), ("post", "/v1/accounts/{account_id}/check"),
        ("post", "/v1/accounts/{account_id}/consume"), ("post", "/v1/accounts/{account_id}/holds"),
        ("post", "/v1/accounts/{account_id}/holds/{hold_id}/capture"),
        ("post", "/v1/accounts/{account_id}/holds/{hold_id}/release"),
        ("get", "/v1/accounts/{account_id}/transactions"), ("get", "/v1/resources"),
        ("get", "/v1/me"), ("get", "/v1/authz"), ("post", "/v1/authz/{path}"), ("get", "/healthz"),
        ("get", "/readyz"), ("get", "/metrics"), ("get", "/openapi.json"),
    }  # fmt: skip
    present = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert expected <= present
    schemas = doc["components"]["schemas"]
    assert schemas["ConsumeRequest"]["required"] == ["resource"]
    assert schemas["CreditRequest"]["properties"]["amount"]["minimum"] == 1
    assert schemas["CreditRequest"]["additionalProperties"] is False
    consume = doc["paths"]["/v1/accounts/{account_id}/consume"]["post"]
    assert {"200", "401", "402", "403", "422", "429"} <= set(consume["responses"])


def test_unknown_route_and_method_are_problems(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    assert_problem(http.get("/v2/nothing"), 404, "not_found")
    r = http.delete("/v1/resources", headers=bearer(api_keys["admin"]))
    assert_problem(r, 405, "method_not_allowed")
    assert "GET" in r.headers["allow"]
