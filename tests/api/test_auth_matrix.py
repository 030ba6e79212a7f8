"""Every endpoint against every scope and against no key: the exact status of each.

``MATRIX`` is the whole table, and ``docs/scopes.md`` shows the same table (a test below
compares them). Each request is one the endpoint would carry out for an allowed key (a real
hold to capture, a real spend to refund), so an allowed key gets the endpoint's own success
status, and a refused one a 401 or 403 problem before anything is written.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from tests.api.helpers import assert_problem, bearer, create_account
from tests.support.gateway import GatewayServer

from quotagate import ids
from quotagate.alerts.store import NewAlert, insert_alerts
from quotagate.api.front import Front

COLUMNS = ("admin", "service", "read", "hook", "settle", "no key")
DOC = Path(__file__).resolve().parents[2] / "docs" / "scopes.md"

MATRIX: dict[str, tuple[int, int, int, int, int, int]] = {
    # endpoint                                     admin service read hook settle no key
    "PUT /v1/accounts/{id}":                       (200, 403, 403, 403, 403, 401),
    "GET /v1/accounts/{id}":                       (200, 200, 200, 403, 403, 401),
    "POST /v1/accounts/{id}/credits (grant)":      (200, 403, 403, 403, 403, 401),
    "POST /v1/accounts/{id}/credits (earn)":       (200, 403, 403, 403, 403, 401),
    "POST /v1/accounts/{id}/credits (refund)":     (200, 200, 403, 403, 403, 401),
    "POST /v1/accounts/{id}/grants":               (201, 403, 403, 403, 403, 401),
    "GET /v1/accounts/{id}/grants":                (200, 200, 200, 403, 403, 401),
    "POST /v1/accounts/{id}/grants/{grant_id}/void": (200, 403, 403, 403, 403, 401),
    "POST /v1/accounts/{id}/check":                (200, 200, 403, 403, 403, 401),
    "POST /v1/accounts/{id}/consume":              (200, 200, 403, 403, 403, 401),
    "POST /v1/charges":                            (200, 200, 403, 403, 403, 401),
    "POST /v1/accounts/{id}/holds":                (201, 201, 403, 403, 403, 401),
    "POST /v1/accounts/{id}/holds/{hold}/capture": (200, 200, 403, 403, 403, 401),
    "POST /v1/accounts/{id}/holds/{hold}/release": (200, 200, 403, 403, 403, 401),
    "POST /v1/holds/{hold}/settle":                (200, 200, 403, 403, 200, 401),
    "GET /v1/accounts/{id}/transactions":          (200, 200, 200, 403, 403, 401),
    "GET /v1/accounts/{id}/usage":                 (200, 200, 200, 403, 403, 401),
    "GET /v1/usage":                               (200, 403, 403, 403, 403, 401),
    "GET /v1/resources":                           (200, 200, 200, 403, 403, 401),
    "GET /v1/alerts":                              (200, 403, 403, 403, 403, 401),
    "GET /v1/webhooks":                            (200, 403, 403, 403, 403, 401),
    "POST /v1/webhooks":                           (201, 403, 403, 403, 403, 401),
    "DELETE /v1/webhooks/{webhook_id}":            (200, 403, 403, 403, 403, 401),
    "GET /v1/webhooks/deliveries":                 (200, 403, 403, 403, 403, 401),
    "POST /v1/webhooks/deliveries/{delivery_id}/redeliver": (200, 403, 403, 403, 403, 401),
    "GET /v1/me":                                  (200, 403, 403, 200, 403, 401),
    "GET /v1/authz":                               (200, 403, 403, 200, 403, 401),
    "POST /v1/authz/{path}":                       (200, 403, 403, 200, 403, 401),
    "GET /healthz":                                (200, 200, 200, 200, 200, 200),
    "GET /readyz":                                 (200, 200, 200, 200, 200, 200),
    "GET /metrics":                                (200, 200, 200, 200, 200, 200),
    "GET /openapi.json":                           (200, 200, 200, 200, 200, 200),
    "GET /ui":                                     (200, 200, 200, 200, 200, 200),
    "GET /ui/{name}":                              (200, 200, 200, 200, 200, 200),
}  # fmt: skip
"""Per endpoint, the status for a key of each scope and for no key."""

PROXY_KEY = frozenset({"GET /v1/me", "GET /v1/authz", "POST /v1/authz/{path}"})
"""Endpoints that take their key in X-Quotagate-Key (the client's Authorization header is
the proxied application's, not ours)."""

OPEN = frozenset(
    {
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /ui",
        "GET /ui/{name}",
    }
)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: Any = None


Prepare = Callable[[httpx.Client, str, str], Call]
"""(client, admin key, account) -> a request the endpoint would carry out now."""


def _hold(http: httpx.Client, admin: str, acct: str) -> str:
    r = http.post(f"/v1/accounts/{acct}/holds", json={"amount": 3}, headers=bearer(admin))
    assert r.status_code == 201, r.text
    hold_id: str = r.json()["hold_id"]
    return hold_id


def _spend(http: httpx.Client, admin: str, acct: str) -> str:
    r = http.post(
        f"/v1/accounts/{acct}/consume", json={"resource": "api_call"}, headers=bearer(admin)
    )
    assert r.status_code == 200, r.text
    spend: str = r.json()["transaction_id"]
    return spend


def _grant(http: httpx.Client, admin: str, acct: str) -> str:
    r = http.post(f"/v1/accounts/{acct}/grants", json={"amount": 3}, headers=bearer(admin))
    assert r.status_code == 201, r.text
    grant_id: str = r.json()["grant_id"]
    return grant_id


def _webhook(http: httpx.Client, admin: str) -> str:
    body = {"url": UNREACHABLE, "events": ["balance_below"]}
    r = http.post("/v1/webhooks", json=body, headers=bearer(admin))
    assert r.status_code == 201, r.text
    webhook_id: str = r.json()["id"]
    return webhook_id


UNREACHABLE = "http://127.0.0.1:9/hook"
"""Where the matrix's webhooks point: nothing sends to them, and they go after each test."""

_DATABASE: list[str] = []
"""The gateway's database, for the one request that needs a row no endpoint makes."""


@pytest.fixture(autouse=True)
def _database(migrated_database_url: str) -> Iterator[None]:
    _DATABASE[:] = [migrated_database_url]
    yield

    async def clean_up() -> None:
        conn = await asyncpg.connect(migrated_database_url)
        try:
            await conn.execute("DELETE FROM webhook_endpoints WHERE url = $1", UNREACHABLE)
            await conn.execute("DELETE FROM alerts WHERE rule = 'test'")
        finally:
            await conn.close()

    asyncio.run(clean_up())


def _delivery(http: httpx.Client, admin: str, acct: str) -> str:
    """A delivery of an alert (alerts come from the flush, so it is written here)."""
    _webhook(http, admin)

    async def write() -> str:
        conn = await asyncpg.connect(_DATABASE[0])
        try:
            async with conn.transaction():
                new = NewAlert("balance_below", acct, "test", f"test|{uuid.uuid4()}", {})
                [alert] = await insert_alerts(conn, [new])
            delivery: str = await conn.fetchval(
                "SELECT id FROM webhook_deliveries WHERE alert_id = $1 LIMIT 1", alert.id
            )
            return delivery
        finally:
            await conn.close()

    return asyncio.run(write())


def _fixed(method: str, path: str, body: Any = None) -> Prepare:
    return lambda http, admin, acct: Call(method, path.format(id=acct), body)


PREPARE: dict[str, Prepare] = {
    "PUT /v1/accounts/{id}": _fixed("PUT", "/v1/accounts/{id}", {"tier": "pro"}),
    "GET /v1/accounts/{id}": _fixed("GET", "/v1/accounts/{id}"),
    "POST /v1/accounts/{id}/credits (grant)": _fixed(
        "POST", "/v1/accounts/{id}/credits", {"amount": 1, "type": "grant"}
    ),
    "POST /v1/accounts/{id}/credits (earn)": _fixed(
        "POST", "/v1/accounts/{id}/credits", {"amount": 1, "type": "earn"}
    ),
    "POST /v1/accounts/{id}/credits (refund)": lambda http, admin, acct: Call(
        "POST",
        f"/v1/accounts/{acct}/credits",
        {"amount": 1, "type": "refund", "refund_of": _spend(http, admin, acct)},
    ),
    "POST /v1/accounts/{id}/grants": _fixed("POST", "/v1/accounts/{id}/grants", {"amount": 1}),
    "GET /v1/accounts/{id}/grants": _fixed("GET", "/v1/accounts/{id}/grants"),
    "POST /v1/accounts/{id}/grants/{grant_id}/void": lambda http, admin, acct: Call(
        "POST", f"/v1/accounts/{acct}/grants/{_grant(http, admin, acct)}/void", {}
    ),
    "POST /v1/accounts/{id}/check": _fixed(
        "POST", "/v1/accounts/{id}/check", {"resource": "api_call"}
    ),
    "POST /v1/accounts/{id}/consume": _fixed(
        "POST", "/v1/accounts/{id}/consume", {"resource": "api_call"}
    ),
    "POST /v1/charges": lambda http, admin, acct: Call(
        "POST", "/v1/charges", {"charges": [{"account_id": acct, "resource": "api_call"}]}
    ),
    "POST /v1/accounts/{id}/holds": _fixed("POST", "/v1/accounts/{id}/holds", {"amount": 1}),
    "POST /v1/accounts/{id}/holds/{hold}/capture": lambda http, admin, acct: Call(
        "POST", f"/v1/accounts/{acct}/holds/{_hold(http, admin, acct)}/capture", {}
    ),
    "POST /v1/accounts/{id}/holds/{hold}/release": lambda http, admin, acct: Call(
        "POST", f"/v1/accounts/{acct}/holds/{_hold(http, admin, acct)}/release", {}
    ),
    "POST /v1/holds/{hold}/settle": lambda http, admin, acct: Call(
        "POST",
        f"/v1/holds/{ids.account_hold_id(acct, _hold(http, admin, acct))}/settle",
        {"amount": 2},
    ),
    "GET /v1/accounts/{id}/transactions": _fixed("GET", "/v1/accounts/{id}/transactions"),
    "GET /v1/accounts/{id}/usage": _fixed("GET", "/v1/accounts/{id}/usage"),
    "GET /v1/usage": _fixed("GET", "/v1/usage"),
    "GET /v1/resources": _fixed("GET", "/v1/resources"),
    "GET /v1/alerts": _fixed("GET", "/v1/alerts"),
    "GET /v1/webhooks": _fixed("GET", "/v1/webhooks"),
    "POST /v1/webhooks": _fixed("POST", "/v1/webhooks", {"url": UNREACHABLE, "events": ["*"]}),
    "DELETE /v1/webhooks/{webhook_id}": lambda http, admin, acct: Call(
        "DELETE", f"/v1/webhooks/{_webhook(http, admin)}"
    ),
    "GET /v1/webhooks/deliveries": _fixed("GET", "/v1/webhooks/deliveries"),
    "POST /v1/webhooks/deliveries/{delivery_id}/redeliver": lambda http, admin, acct: Call(
        "POST", f"/v1/webhooks/deliveries/{_delivery(http, admin, acct)}/redeliver"
    ),
    "GET /v1/me": _fixed("GET", "/v1/me"),
    "GET /v1/authz": _fixed("GET", "/v1/authz"),
    "POST /v1/authz/{path}": _fixed("POST", "/v1/authz/api/chat/1"),
    "GET /healthz": _fixed("GET", "/healthz"),
    "GET /readyz": _fixed("GET", "/readyz"),
    "GET /metrics": _fixed("GET", "/metrics"),
    "GET /openapi.json": _fixed("GET", "/openapi.json"),
    "GET /ui": _fixed("GET", "/ui"),
    "GET /ui/{name}": _fixed("GET", "/ui/app.js"),
}


def key_headers(endpoint: str, key: str) -> dict[str, str]:
    return {"X-Quotagate-Key": key} if endpoint in PROXY_KEY else bearer(key)


def send(http: httpx.Client, call: Call, acct: str, headers: dict[str, str]) -> httpx.Response:
    headers = {**headers, "X-Account-Id": acct}
    return http.request(call.method, call.path, json=call.body, headers=headers)


def test_every_route_of_the_app_is_in_the_matrix(gateway: GatewayServer) -> None:
    """A new endpoint cannot ship without its row (and so its row in the docs)."""
    assert set(PREPARE) == set(MATRIX)
    in_matrix = {
        label.split(" ")[1].replace("{id}", "{account_id}").replace("{hold}", "{hold_id}")
        for label in MATRIX
    }
    routes = {
        str(getattr(r, "path", "")).replace("{path:path}", "{path}") for r in gateway.app.routes
    }
    front_of_app = getattr(gateway.app, "front", None)  # the gateway's app carries its front
    assert isinstance(front_of_app, Front), gateway.app
    front = set(front_of_app.paths)  # answered before the router
    assert routes.isdisjoint(front)
    assert routes | front == in_matrix


@pytest.mark.parametrize("endpoint", list(MATRIX))
def test_matrix(http: httpx.Client, api_keys: dict[str, str], endpoint: str) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    expected = dict(zip(COLUMNS, MATRIX[endpoint], strict=True))
    for scope in COLUMNS:
        call = PREPARE[endpoint](http, admin, acct)
        headers = {} if scope == "no key" else key_headers(endpoint, api_keys[scope])
        r = send(http, call, acct, headers)
        assert r.status_code == expected[scope], (scope, r.status_code, r.text)
        if expected[scope] == 401:
            assert_problem(r, 401, "unauthorized")
        elif expected[scope] == 403:
            assert_problem(r, 403, "forbidden")


@pytest.mark.parametrize("endpoint", sorted(set(MATRIX) - OPEN))
def test_unknown_and_malformed_keys_are_401(
    http: httpx.Client, api_keys: dict[str, str], endpoint: str
) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    call = PREPARE[endpoint](http, admin, acct)
    near = admin[:-1] + ("A" if admin[-1] != "A" else "B")
    for headers in (
        key_headers(endpoint, "qg_0123456789abcdef_" + "x" * 43),
        key_headers(endpoint, near),
        key_headers(endpoint, "not-a-key"),
        {"Authorization": f"Basic {admin}"},
    ):
        assert_problem(send(http, call, acct, headers), 401, "unauthorized")


def test_the_documented_matrix_is_the_tested_one() -> None:
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == len(COLUMNS) + 1 and re.fullmatch(r"\d{3}( \w+)?", cells[1]):
            rows[cells[0]] = tuple(int(c.split(" ")[0]) for c in cells[1:])
    assert rows == MATRIX


@pytest.mark.parametrize("endpoint", sorted(set(MATRIX) - PROXY_KEY - OPEN))
def test_proxy_header_is_not_a_bearer_key(
    http: httpx.Client, api_keys: dict[str, str], endpoint: str
) -> None:
    acct = create_account(http, api_keys["admin"])
    call = PREPARE[endpoint](http, api_keys["admin"], acct)
    assert_problem(
        send(http, call, acct, {"X-Quotagate-Key": api_keys["admin"]}), 401, "unauthorized"
    )


def test_bearer_is_not_the_proxy_key(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"])
    for path in ("/v1/me", "/v1/authz"):
        r = http.get(path, headers={**bearer(api_keys["hook"]), "X-Account-Id": acct})
        assert_problem(r, 401, "unauthorized")


def test_401_names_the_scheme(http: httpx.Client) -> None:
    r = http.get("/v1/resources")
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_non_admin_keys_cannot_grant(http: httpx.Client, api_keys: dict[str, str]) -> None:
    """No key but admin creates credits from nothing: grants and earnings need admin, a
    refund needs a spend to return."""
    acct = create_account(http, api_keys["admin"], tier="free")
    url = f"/v1/accounts/{acct}/credits"
    for scope in ("service", "read", "hook", "settle"):
        for kind in ("grant", "earn"):
            r = http.post(
                url, json={"amount": 10**6, "type": kind}, headers=bearer(api_keys[scope])
            )
            assert_problem(r, 403, "forbidden")
        for source in ("refund", "purchase"):
            r = http.post(
                f"/v1/accounts/{acct}/grants",
                json={"amount": 10**6, "source": source},
                headers=bearer(api_keys[scope]),
            )
            assert_problem(r, 403, "forbidden")
        r = http.put(
            f"/v1/accounts/{acct}", json={"tier": "enterprise"}, headers=bearer(api_keys[scope])
        )
        assert_problem(r, 403, "forbidden")
    r = http.post(
        url, json={"amount": 10**6, "type": "refund"}, headers=bearer(api_keys["service"])
    )
    assert_problem(r, 422, "invalid_request")
    view = http.get(f"/v1/accounts/{acct}", headers=bearer(api_keys["admin"])).json()
    assert (view["tier"], view["balance"]) == ("free", 100)
