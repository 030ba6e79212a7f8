"""Holds: create, capture, release; 404 for unknown, ended or expired holds."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from tests.api.helpers import account, assert_problem, bearer, create_account


def hold(http: httpx.Client, key: str, acct: str, body: object, **headers: str) -> httpx.Response:
    return http.post(f"/v1/accounts/{acct}/holds", json=body, headers={**bearer(key), **headers})


def test_hold_capture_part(http: httpx.Client, api_keys: dict[str, str]) -> None:
    service = api_keys["service"]
    acct = create_account(http, api_keys["admin"])
    r = hold(http, service, acct, {"resource": "premium_feature", "units": 10, "ttl_seconds": 60})
    assert r.status_code == 201
    h = r.json()
    assert set(h) == {"hold_id", "amount", "expires_at", "available"}
    assert (h["amount"], h["available"]) == (50, 950)
    view = account(http, api_keys["admin"], acct)
    assert (view["balance"], view["reserved"], view["available"]) == (1000, 50, 950)
    r = http.post(
        f"/v1/accounts/{acct}/holds/{h['hold_id']}/capture",
        json={"amount": 20},
        headers=bearer(service),
    )
    assert r.status_code == 200
    assert (r.json()["cost"], r.json()["remaining"]) == (20, 980)
    view = account(http, api_keys["admin"], acct)
    assert (view["balance"], view["reserved"], view["available"]) == (980, 0, 980)
    again = http.post(f"/v1/accounts/{acct}/holds/{h['hold_id']}/capture", headers=bearer(service))
    assert_problem(again, 404, "hold_not_found")


def test_hold_amount_capture_all_without_body(http: httpx.Client, api_keys: dict[str, str]) -> None:
    service = api_keys["service"]
    acct = create_account(http, api_keys["admin"])
    h = hold(http, service, acct, {"amount": 30}).json()
    r = http.post(f"/v1/accounts/{acct}/holds/{h['hold_id']}/capture", headers=bearer(service))
    assert r.status_code == 200 and r.json()["cost"] == 30
    assert account(http, api_keys["admin"], acct)["balance"] == 970


def test_capture_above_hold_is_422(http: httpx.Client, api_keys: dict[str, str]) -> None:
    service = api_keys["service"]
    acct = create_account(http, api_keys["admin"])
    h = hold(http, service, acct, {"amount": 30}).json()
    url = f"/v1/accounts/{acct}/holds/{h['hold_id']}/capture"
    assert_problem(
        http.post(url, json={"amount": 31}, headers=bearer(service)), 422, "invalid_amount"
    )
    assert_problem(
        http.post(url, json={"amount": 0}, headers=bearer(service)), 422, "invalid_amount"
    )
    assert_problem(
        http.post(url, json={"amount": 1.0}, headers=bearer(service)), 422, "invalid_amount"
    )
    assert account(http, api_keys["admin"], acct)["reserved"] == 30


def test_release(http: httpx.Client, api_keys: dict[str, str]) -> None:
    service = api_keys["service"]
    acct = create_account(http, api_keys["admin"])
    h = hold(http, service, acct, {"amount": 30}).json()
    url = f"/v1/accounts/{acct}/holds/{h['hold_id']}/release"
    r = http.post(url, headers={**bearer(service), "Idempotency-Key": "rel-1"})
    assert r.status_code == 200
    assert r.json() == {"released": 30, "available": 1000}
    replay = http.post(url, headers={**bearer(service), "Idempotency-Key": "rel-1"})
    assert replay.json() == r.json() and replay.headers["idempotent-replayed"] == "true"
    assert_problem(http.post(url, headers=bearer(service)), 404, "hold_not_found")
    assert_problem(http.post(url, json={"x": 1}, headers=bearer(service)), 422, "invalid_request")


def test_hold_402_and_idempotency(http: httpx.Client, api_keys: dict[str, str]) -> None:
    service = api_keys["service"]
    acct = create_account(http, api_keys["admin"], tier="free")
    problem = assert_problem(
        hold(http, service, acct, {"amount": 101}), 402, "insufficient_credits"
    )
    assert (problem["required"], problem["available"]) == (101, 100)
    first = hold(http, service, acct, {"amount": 60}, **{"Idempotency-Key": "h-1"})
    again = hold(http, service, acct, {"amount": 60}, **{"Idempotency-Key": "h-1"})
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["hold_id"] == first.json()["hold_id"]
    assert account(http, api_keys["admin"], acct)["reserved"] == 60
    conflict = hold(http, service, acct, {"amount": 61}, **{"Idempotency-Key": "h-1"})
    assert_problem(conflict, 409, "idempotency_conflict")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "invalid_request"),
        ({"resource": "api_call", "amount": 5}, "invalid_request"),
        ({"amount": 5, "units": 2}, "invalid_request"),
        ({"amount": 0}, "invalid_amount"),
        ({"amount": "5"}, "invalid_amount"),
        ({"resource": "api_call", "units": 1.5}, "invalid_amount"),
        ({"resource": "nope"}, "unknown_resource"),
        ({"amount": 5, "ttl_seconds": 0}, "invalid_request"),
        ({"amount": 5, "ttl_seconds": 86401}, "invalid_request"),
        ({"amount": 5, "ttl_seconds": 1.5}, "invalid_request"),
    ],
)
def test_bad_hold_writes_nothing(
    http: httpx.Client, api_keys: dict[str, str], body: object, code: str
) -> None:
    acct = create_account(http, api_keys["admin"])
    assert_problem(hold(http, api_keys["service"], acct, body), 422, code)
    assert account(http, api_keys["admin"], acct)["reserved"] == 0


def test_unknown_and_malformed_hold_ids(http: httpx.Client, api_keys: dict[str, str]) -> None:
    service = bearer(api_keys["service"])
    acct = create_account(http, api_keys["admin"])
    for action in ("capture", "release"):
        r = http.post(f"/v1/accounts/{acct}/holds/{uuid.uuid4()}/{action}", headers=service)
        assert_problem(r, 404, "hold_not_found")
        r = http.post(f"/v1/accounts/{acct}/holds/not-a-uuid/{action}", headers=service)
        assert_problem(r, 422, "invalid_request")


def test_expired_hold_is_404_and_returns_credits(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    service = api_keys["service"]
    acct = create_account(http, api_keys["admin"])
    h = hold(http, service, acct, {"amount": 40, "ttl_seconds": 1}).json()
    time.sleep(1.2)
    r = http.post(f"/v1/accounts/{acct}/holds/{h['hold_id']}/capture", headers=bearer(service))
    assert_problem(r, 404, "hold_not_found")
    view = account(http, api_keys["admin"], acct)
    assert (view["balance"], view["reserved"], view["available"]) == (1000, 0, 1000)


def test_the_account_lists_its_open_holds_and_buckets(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    admin, service = api_keys["admin"], api_keys["service"]
    acct = create_account(http, admin)
    granted = http.post(f"/v1/accounts/{acct}/credits", json={"amount": 30, "type": "grant"},
                        headers=bearer(admin))  # fmt: skip
    assert granted.status_code == 200, granted.text
    later = hold(http, service, acct, {"amount": 7, "ttl_seconds": 600}).json()
    sooner = hold(http, service, acct, {"resource": "premium_feature", "units": 2,
                                        "ttl_seconds": 60}).json()  # fmt: skip
    view = account(http, admin, acct)
    assert view["buckets"] == {"monthly": 1000, "purchased": 30}
    assert view["holds"] == [  # the soonest to expire first
        {"hold_id": sooner["hold_id"], "amount": 10, "expires_at": sooner["expires_at"],
         "resource": "premium_feature", "units": 2},
        {"hold_id": later["hold_id"], "amount": 7, "expires_at": later["expires_at"],
         "resource": None, "units": None},
    ]  # fmt: skip
    assert view["reserved"] == 17
    released = http.post(f"/v1/accounts/{acct}/holds/{sooner['hold_id']}/release",
                         headers=bearer(service))  # fmt: skip
    assert released.status_code == 200
    assert [h["hold_id"] for h in account(http, admin, acct)["holds"]] == [later["hold_id"]]
