"""Every endpoint against every kind of key: 401 without a (known) key, 403 without the scope.

The product guide's admin check let anyone grant credits; here a service, read or hook key
gets 403 on every admin endpoint.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from tests.api.helpers import assert_problem, bearer, create_account

HOLD = str(uuid.uuid4())
ALL = ("admin", "service", "read", "hook")

# method, path ({a} is the account), body, scopes allowed, key header style
CASES: list[tuple[str, str, Any, set[str], str]] = [
    ("PUT", "/v1/accounts/{a}", {"tier": "pro"}, {"admin"}, "bearer"),
    ("GET", "/v1/accounts/{a}", None, {"admin", "service", "read"}, "bearer"),
    ("POST", "/v1/accounts/{a}/credits", {"amount": 1, "type": "grant"}, {"admin"}, "bearer"),
    ("POST", "/v1/accounts/{a}/credits", {"amount": 1, "type": "earn"}, {"admin"}, "bearer"),
    (
        "POST",
        "/v1/accounts/{a}/credits",
        {"amount": 1, "type": "refund"},
        {"admin", "service"},
        "bearer",
    ),
    ("POST", "/v1/accounts/{a}/check", {"resource": "api_call"}, {"admin", "service"}, "bearer"),
    ("POST", "/v1/accounts/{a}/consume", {"resource": "api_call"}, {"admin", "service"}, "bearer"),
    ("POST", "/v1/accounts/{a}/holds", {"amount": 1}, {"admin", "service"}, "bearer"),
    ("POST", f"/v1/accounts/{{a}}/holds/{HOLD}/capture", {}, {"admin", "service"}, "bearer"),
    ("POST", f"/v1/accounts/{{a}}/holds/{HOLD}/release", {}, {"admin", "service"}, "bearer"),
    ("GET", "/v1/accounts/{a}/transactions", None, {"admin", "service", "read"}, "bearer"),
    ("GET", "/v1/resources", None, {"admin", "service", "read"}, "bearer"),
    ("GET", "/v1/me", None, {"admin", "hook"}, "proxy"),
    ("GET", "/v1/authz", None, {"admin", "hook"}, "proxy"),
    ("POST", "/v1/authz/api/chat/1", None, {"admin", "hook"}, "proxy"),
]
IDS = [f"{m} {p.replace('{a}', 'A')} {b or ''}" for m, p, b, _, _ in CASES]


def send(
    http: httpx.Client,
    case: tuple[str, str, Any, set[str], str],
    acct: str,
    headers: dict[str, str],
) -> httpx.Response:
    method, path, body, _, _ = case
    headers = {**headers, "X-Account-Id": acct}
    return http.request(method, path.format(a=acct), json=body, headers=headers)


def key_headers(style: str, key: str) -> dict[str, str]:
    return bearer(key) if style == "bearer" else {"X-Quotagate-Key": key}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matrix(http: httpx.Client, api_keys: dict[str, str], case: tuple[Any, ...]) -> None:
    _, _, _, allowed, style = case
    acct = create_account(http, api_keys["admin"])
    # No key, an unknown key, a malformed one: 401.
    for headers in (
        {},
        key_headers(style, "qg_0123456789abcdef_" + "x" * 43),
        key_headers(style, api_keys["admin"][:-1] + ("A" if api_keys["admin"][-1] != "A" else "B")),
        key_headers(style, "not-a-key"),
        {"Authorization": f"Basic {api_keys['admin']}"},
    ):
        assert_problem(send(http, case, acct, headers), 401, "unauthorized")
    # Each scope: 403 unless allowed; allowed ones get past the key check.
    for scope in ALL:
        r = send(http, case, acct, key_headers(style, api_keys[scope]))
        if scope in allowed:
            assert r.status_code not in (401, 403), (scope, r.status_code, r.text)
        else:
            assert_problem(r, 403, "forbidden")


@pytest.mark.parametrize("case", [c for c in CASES if c[4] == "bearer"], ids=lambda c: c[1])
def test_proxy_header_is_not_a_bearer_key(
    http: httpx.Client, api_keys: dict[str, str], case: tuple[Any, ...]
) -> None:
    acct = create_account(http, api_keys["admin"])
    r = send(http, case, acct, {"X-Quotagate-Key": api_keys["admin"]})
    assert_problem(r, 401, "unauthorized")


def test_bearer_is_not_the_proxy_key(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"])
    for path in ("/v1/me", "/v1/authz"):
        r = http.get(path, headers={**bearer(api_keys["hook"]), "X-Account-Id": acct})
        assert_problem(r, 401, "unauthorized")


def test_401_names_the_scheme(http: httpx.Client) -> None:
    r = http.get("/v1/resources")
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_non_admin_keys_cannot_grant(http: httpx.Client, api_keys: dict[str, str]) -> None:
    """The product guide's bug, checked: no key but admin gives credits away."""
    acct = create_account(http, api_keys["admin"], tier="free")
    url = f"/v1/accounts/{acct}/credits"
    for scope in ("service", "read", "hook"):
        for kind in ("grant", "earn"):
            r = http.post(
                url, json={"amount": 10**6, "type": kind}, headers=bearer(api_keys[scope])
            )
            assert_problem(r, 403, "forbidden")
        r = http.put(
            f"/v1/accounts/{acct}", json={"tier": "enterprise"}, headers=bearer(api_keys[scope])
        )
        assert_problem(r, 403, "forbidden")
    view = http.get(f"/v1/accounts/{acct}", headers=bearer(api_keys["admin"])).json()
    assert (view["tier"], view["balance"]) == ("free", 100)
