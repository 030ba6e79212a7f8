"""The front (the hook, consume, check, hold) is the one way in to its endpoints: it takes its
own paths only (decoded, as the router reads them), answers an unexpected error with a logged
500 problem document, and every way a request can reach it gives the same answer: the HTTP
protocol, the app's ASGI entry under uvicorn's own protocol, and the protocol's fallbacks (a
uvicorn it does not fit, ``Expect: 100-continue``). Keep-alive after a fast answer uses one
timer per connection; after an answer through ASGI, uvicorn's own."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from tests.api.helpers import assert_problem, balance, bearer, create_account
from tests.api.test_hook_protocol import Conn, Reply, hook, request
from tests.support.gateway import GatewayServer, gateway_settings, new_account_id

from quotagate.api import protocol
from quotagate.api.app import create_app
from quotagate.api.routes.hook import Hook
from quotagate.api.server import uvicorn_settings
from quotagate.api.service_endpoints import Consume
from quotagate.config import load_config
from quotagate.settings import Settings


def test_only_the_front_paths_take_the_fast_path(
    conn: Conn, http: httpx.Client, api_keys: dict[str, str], through_asgi: list[int]
) -> None:
    acct = create_account(http, api_keys["admin"], tier="pro")
    headers = {
        "X-Quotagate-Key": api_keys["hook"],
        "X-Account-Id": acct,
        "X-Quota-Resource": "api_call",
    }
    # Matched on the decoded path, as the router matches: %61 is "a".
    for path in ("/v1/authz", "/v1/authz/api/chat/1", "/v1/authz?x=1", "/v1/authz/%61pi"):
        conn.send(request("GET", path, headers))
        r = conn.reply()
        assert r.status == 200, path
        assert r.header("x-quota-account") == acct
    # The hook's own prefix spelled with escapes is the hook's, and refused: the proxied path
    # (Envoy's, after the prefix) has no agreed reading. With the proxy's URI it is priced.
    conn.send(request("GET", "/v1/%61uthz/api/x", headers))
    r = conn.reply()
    assert (r.status, r.header("x-quota-reason")) == (400, "invalid_path")
    conn.send(request("GET", "/v1/%61uthz", {**headers, "X-Original-URI": "/api/x"}))
    assert conn.reply().status == 200
    for path in ("/v1/authzx", "/v1/authz-other"):
        assert_problem(http.get(path, headers=headers), 404, "not_found")
    service = bearer(api_keys["service"])
    for path in (
        f"/v1/accounts/{acct}/consume/",
        f"/v1/accounts/{acct}/consumed",
        "/v1/accounts//consume",
    ):
        assert_problem(
            http.post(path, json={"resource": "api_call"}, headers=service), 404, "not_found"
        )
    # A path below an endpoint of the front is the router's.
    below = http.post(f"/v1/accounts/{acct}/holds/nope/capture", json={}, headers=service)
    assert below.status_code == 422, below.text
    assert through_asgi == [0]
    assert balance(http, api_keys["admin"], acct) == 1000 - 5


@pytest.mark.parametrize("broken", ["hook", "consume"])
async def test_an_unexpected_error_is_a_problem_document(
    monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    app = create_app(Settings.from_env({}), config=load_config())

    def bug(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Hook if broken == "hook" else Consume, "begin", bug)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        # no lifespan: the front is reached all the same
        if broken == "hook":
            r = await client.get("/v1/authz")
        else:
            r = await client.post("/v1/accounts/a/consume", json={"resource": "api_call"})
    assert_problem(r, 500, "internal_error")
    assert "a bug" not in r.text


def _same(a: Reply, b: Reply) -> None:
    assert a.status == b.status
    assert a.comparable() == b.comparable()
    assert a.body == b.body


def _cases(api_keys: dict[str, str], acct: str) -> list[bytes]:
    """Requests whose answers do not depend on what came before."""
    check = f"/v1/accounts/{acct}/check"
    body = b'{"resource": "api_call", "units": 2}'
    json_service = {"Content-Type": "application/json", **bearer(api_keys["service"])}
    return [
        request("GET", "/v1/authz/x", hook(api_keys, None)),  # 401 no identity
        request("GET", "/v1/authz/x", hook(api_keys, new_account_id())),  # 403
        request("GET", "/v1/authz/x", hook(api_keys, acct, "gold")),  # 422
        request("POST", check, json_service, body=body),  # 200
        request("POST", check, bearer(api_keys["read"]), body=body),  # 403
        request("GET", check, json_service),  # 405
        request("POST", f"/v1/accounts/{acct}/consume", json_service, body=b"[]"),  # 422
    ]


@pytest.fixture
def stock_gateway(
    redis_url: str, migrated_database_url: str, gateway_prefix: str, gateway: GatewayServer
) -> Iterator[GatewayServer]:
    """The same app on the module's prefix, served by uvicorn's own httptools protocol."""
    server = GatewayServer(gateway_settings(redis_url, migrated_database_url, gateway_prefix))
    settings = {**uvicorn_settings(), "http": "httptools"}
    config = uvicorn.Config(
        server.app, host="127.0.0.1", port=server.port, log_level="warning", **settings
    )
    server.server = uvicorn.Server(config)
    server.thread.__init__(target=server.server.run, daemon=True)  # type: ignore[misc]
    server.start()
    yield server
    server.stop()


def test_under_uvicorns_own_protocol_the_answers_are_the_same(
    conn: Conn,
    stock_gateway: GatewayServer,
    http: httpx.Client,
    api_keys: dict[str, str],
    through_asgi: list[int],
) -> None:
    acct = create_account(http, api_keys["admin"])
    stock = Conn(stock_gateway)
    try:
        cases = _cases(api_keys, acct)
        for raw in cases:
            conn.send(raw)
            stock.send(raw)
            _same(conn.reply(), stock.reply())
        assert through_asgi == [len(cases)]  # each once, on the stock server
        # A charge through it is a charge like any other.
        stock.send(request("GET", "/v1/authz/x", hook(api_keys, acct)))
        assert stock.reply().header("x-quota-remaining") == "999"
    finally:
        stock.close()


def test_when_uvicorn_does_not_fit_every_request_goes_through_asgi(
    conn: Conn,
    gateway: GatewayServer,
    http: httpx.Client,
    api_keys: dict[str, str],
    through_asgi: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    acct = create_account(http, api_keys["admin"])
    monkeypatch.setattr(protocol, "_UVICORN_FITS", False)
    fallback = Conn(gateway)  # a connection made now gets a protocol without the front
    try:
        cases = _cases(api_keys, acct)
        for raw in cases:
            conn.send(raw)
            fallback.send(raw)
            _same(conn.reply(), fallback.reply())
        assert through_asgi == [len(cases)]
    finally:
        fallback.close()


def test_expect_100_continue_goes_through_asgi(
    conn: Conn, http: httpx.Client, api_keys: dict[str, str], through_asgi: list[int]
) -> None:
    acct = create_account(http, api_keys["admin"])
    headers = {"Content-Type": "application/json", **bearer(api_keys["service"])}
    body = b'{"resource": "api_call"}'
    conn.send(
        request(
            "POST",
            f"/v1/accounts/{acct}/consume",
            {**headers, "Expect": "100-continue", "Content-Length": str(len(body))},
        )
    )
    assert conn.rfile.readline() == b"HTTP/1.1 100 Continue\r\n"
    assert conn.rfile.readline() == b"\r\n"
    conn.send(body)
    r = conn.reply()
    assert (r.status, r.json()["remaining"]) == (200, 999)
    assert through_asgi == [1]


@pytest.fixture
def short_keep_alive(
    redis_url: str, migrated_database_url: str, gateway_prefix: str, gateway: GatewayServer
) -> Iterator[GatewayServer]:
    server = GatewayServer(gateway_settings(redis_url, migrated_database_url, gateway_prefix))
    server.server.config.timeout_keep_alive = 1
    server.start()
    yield server
    server.stop()


def _protocols(gateway: GatewayServer) -> list[protocol.GatewayProtocol]:
    return list(gateway.server.server_state.connections)  # type: ignore[arg-type]


def test_keep_alive_closes_idle_connections_either_way(
    short_keep_alive: GatewayServer, http: httpx.Client, api_keys: dict[str, str]
) -> None:
    acct = create_account(http, api_keys["admin"])
    fast = Conn(short_keep_alive)
    fast.send(request("GET", "/v1/authz", hook(api_keys, acct)))
    assert fast.reply().status == 200
    (p,) = _protocols(short_keep_alive)
    assert p._idle_timer is not None and p.timeout_keep_alive_task is None
    slow = Conn(short_keep_alive)
    try:
        slow.send(request("GET", "/healthz"))
        assert slow.reply().status == 200
        (q,) = [x for x in _protocols(short_keep_alive) if x is not p]
        assert q._idle_timer is None and q.timeout_keep_alive_task is not None  # uvicorn's
        # Busy past the timeout: kept open. Then idle: closed, both.
        for _ in range(4):
            time.sleep(0.4)
            fast.send(request("GET", "/v1/authz", hook(api_keys, acct)))
            assert fast.reply().status == 200
        started = time.monotonic()
        assert fast.closed_by_server() and slow.closed_by_server()
        assert time.monotonic() - started < 3
    finally:
        fast.close()
        slow.close()
