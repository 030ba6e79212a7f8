"""A request must not dodge its price by how it spells its URI: every spelling an upstream may
read as a premium page costs what a premium page costs, through each proxy's way of naming the
request; spellings that upstreams read in different ways, or that the ledger cannot store
(NUL, bytes that are not UTF-8), are refused and charge nothing."""

from __future__ import annotations

import http.client

import httpx
import pytest
from tests.api.helpers import create_account
from tests.support.gateway import GatewayServer

from quotagate.api.priced_path import normalized_path
from quotagate.config import parse_config
from quotagate.errors import InvalidPath

PREMIUM = 5  # the default config: premium_feature, any method, /api/premium/*
PLAIN = 1  # api_call, /api/*

PRICED = [
    ("GET", "/api/premium/x", PREMIUM),
    ("GET", "/API/premium/x", PREMIUM),
    ("GET", "/api/Premium/x", PREMIUM),
    ("GET", "/Api/PREMIUM/X", PREMIUM),
    ("get", "/api/premium/x", PREMIUM),
    ("GET", "/api/%70remium/x", PREMIUM),
    ("GET", "/api/%50REMIUM/x", PREMIUM),
    ("GET", "//api//premium//x", PREMIUM),
    ("GET", "/api/premium;jsessionid=0AF3/x", PREMIUM),
    ("GET", "/api;v=2/premium/x", PREMIUM),
    ("GET", "/api/premium./x", PREMIUM),
    ("GET", "/api/premium%20/x", PREMIUM),
    ("GET", "/api/premium.%20./x", PREMIUM),
    ("GET", "/api/prem%C4%B1um/x", PREMIUM),  # dotless i: I in upper case
    ("GET", "/api/%EF%BD%90remium/x", PREMIUM),  # fullwidth p: p in NFKC
    ("GET", "/api/premium/x?next=/api/other", PREMIUM),
    ("GET", "/api/premium/", PREMIUM),
    ("GET", "/api/premium/x/", PREMIUM),
    ("GET", "/api/other", PLAIN),
    ("GET", "/api/premiumx", PLAIN),
    ("POST", "/api/files", 2),
    ("post", "/API/Files", 2),
    ("POST", "/api/files/", 2),  # served as /api/files by most upstreams
    ("POST", "/api/files;x=1", 2),
    ("GET", "/api/files", PLAIN),  # the file_upload route is POST only
    ("HEAD", "/api/chat/1", PLAIN),
    ("POST", "/API/CHAT/1", 1),
]

REFUSED = [
    "/api/premium/../x",
    "/api/premium/%2e%2e/x",
    "/api/premium/%2E%2e/x",
    "/api/premium/..;/x",
    "/api/premium/.;x/x",
    "/api/./premium/x",
    "/api/premium/./x",
    "/api/premium/.../x",
    "/api/premium/%2e/x",
    "/api/premium%2Fx",
    "/api/premium%2f..%2fx",
    "/api/premium%5C..%5Cx",
    "/api/premium\\..\\x",
    "/api/%252e%252e/x",
    "/api/premium%252Fx",
    "/api/%00/x",
    "/api/premium/x%00",
    "/api/x%0d%0aSet-Cookie:%20a=b",
    "/api/%7f",
    "/api/%ff/x",
    "/api/%C0%AE%C0%AE/x",  # an overlong UTF-8 dot
    "/api/premium%EF%BC%8F..%EF%BC%8Fx",  # fullwidth slashes: / in NFKC
    "/api/premium%EF%BC%BCx",  # a fullwidth backslash
    "/api/;x/premium",
]


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("/api/premium/x", "/api/premium/x"),
        ("/API/Premium/x", "/API/Premium/x"),  # case is the routes' business
        ("/api/premium/x?a=1#f", "/api/premium/x"),
        ("//api//premium///x", "/api/premium/x"),
        ("/api/%70remium/x", "/api/premium/x"),
        ("/api/premium;jsessionid=1/x;v=2", "/api/premium/x"),
        ("/api/premium. ./x", "/api/premium/x"),
        ("/api/premium/", "/api/premium/"),
        ("/api/%EF%BD%90remium", "/api/premium"),
        ("/caf%C3%A9/", "/café/"),
        ("/report%25", "/report%"),  # a literal percent, not an escape
        ("/.well-known/x", "/.well-known/x"),
        ("", "/"),
        ("/", "/"),
        ("?a=1", "/"),
    ],
)
def test_the_normalised_path(uri: str, path: str) -> None:
    assert normalized_path(uri) == path


@pytest.mark.parametrize("uri", REFUSED)
def test_spellings_upstreams_read_differently_are_refused(uri: str) -> None:
    with pytest.raises(InvalidPath):
        normalized_path(uri)


def test_a_route_can_ask_for_the_exact_case() -> None:
    config = parse_config(
        """
        [resources]
        api_call = 1
        report = 7
        [tiers.free]
        credit_limit = 1
        monthly_grant = 1
        [[authz.routes]]
        path = "/Reports/*"
        resource = "report"
        case_sensitive = true
        [[authz.routes]]
        path = "/*"
        resource = "api_call"
        """
    )
    assert [
        config.authz.route_for("GET", p).resource  # type: ignore[union-attr]
        for p in ("/Reports/1", "/reports/1", "/REPORTS/1")
    ] == ["report", "api_call", "api_call"]


def hook_request(
    gateway: GatewayServer, carrier: str, key: str, account: str, method: str, uri: str
) -> tuple[int, dict[str, str], bytes]:
    """One hook call naming ``method`` and ``uri`` as ``carrier`` (a proxy) does, written
    exactly (httpx would normalise the URI); (status, headers, body)."""
    headers = {"X-Quotagate-Key": key, "X-Account-Id": account}
    target = "/v1/authz"
    if carrier == "nginx":
        headers |= {"X-Original-Method": method, "X-Original-URI": uri}
    elif carrier == "traefik":
        headers |= {"X-Forwarded-Method": method, "X-Forwarded-Uri": uri}
    else:  # Envoy: the client's own method, the client's path after /v1/authz
        target += uri
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        connection.request(method if carrier == "envoy" else "GET", target, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("carrier", ["nginx", "traefik", "envoy"])
def test_every_spelling_costs_what_the_upstream_serves(
    gateway: GatewayServer, http: httpx.Client, api_keys: dict[str, str], carrier: str
) -> None:
    acct = create_account(http, api_keys["admin"], tier="enterprise")
    charged = 0
    for method, uri, cost in PRICED:
        if carrier == "envoy" and method.islower():
            continue  # http.client sends the method as given, which is no HTTP method
        status, headers, body = hook_request(gateway, carrier, api_keys["hook"], acct, method, uri)
        assert (status, headers.get("x-quota-cost")) == (200, str(cost)), (method, uri, body)
        charged += cost
    assert_balance(http, api_keys["admin"], acct, 10_000 - charged)


@pytest.mark.parametrize("carrier", ["nginx", "traefik", "envoy"])
def test_refused_spellings_charge_nothing_and_write_nothing(
    gateway: GatewayServer, http: httpx.Client, api_keys: dict[str, str], carrier: str
) -> None:
    acct = create_account(http, api_keys["admin"], tier="enterprise")
    before = history(http, api_keys["admin"], acct)
    for uri in REFUSED:
        status, headers, body = hook_request(gateway, carrier, api_keys["hook"], acct, "GET", uri)
        assert (status, headers.get("x-quota-reason")) == (400, "invalid_path"), (uri, body)
        assert headers["content-type"] == "application/problem+json"
        assert httpx.Response(status, content=body).json()["code"] == "invalid_path"
    assert history(http, api_keys["admin"], acct) == before
    assert_balance(http, api_keys["admin"], acct, 10_000)


def assert_balance(http: httpx.Client, admin: str, acct: str, expected: int) -> None:
    r = http.get(f"/v1/accounts/{acct}", headers={"Authorization": f"Bearer {admin}"})
    assert r.json()["balance"] == expected


def history(http: httpx.Client, admin: str, acct: str) -> list[str]:
    """The account's transaction ids, those still in the outbox included."""
    r = http.get(f"/v1/accounts/{acct}/transactions", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200, r.text
    return [t["id"] for t in r.json()["transactions"]]


def test_a_method_that_is_no_http_method_is_refused(
    gateway: GatewayServer, http: httpx.Client, api_keys: dict[str, str]
) -> None:
    acct = create_account(http, api_keys["admin"], tier="enterprise")
    status, headers, _ = hook_request(
        gateway, "nginx", api_keys["hook"], acct, "GET /api/x HTTP/1.1", "/api/premium/x"
    )
    assert (status, headers.get("x-quota-reason")) == (400, "invalid_path")
    assert_balance(http, api_keys["admin"], acct, 10_000)
