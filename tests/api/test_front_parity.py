"""Consume, check and hold answered by the front in the HTTP protocol, byte for byte the
same as through ASGI (an absolute-form target, which the protocol leaves to the app), for every
answer they give: success, idempotent replay, Idempotency-Key conflict, and each refusal
(401, 403, 404, 402, 405, 409, 413, 422, 429, 503)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.api.helpers import balance, bearer, create_account
from tests.api.test_hook_protocol import Conn, Reply, hook, request
from tests.support.gateway import GatewayServer, gateway_settings, new_account_id, running_gateway
from tests.support.servers import RedisProcess, redis_process


def post(
    path: str, key: str | None, body: Any, **headers: str
) -> tuple[str, str, dict[str, str], bytes]:
    h = {"Content-Type": "application/json", **bearer(key)} if key else {}
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return "POST", path, h, data


def both(
    conn: Conn, gateway: GatewayServer, counter: list[int], method: str, path: str,
    headers: dict[str, str], body: bytes | None,
) -> tuple[Reply, Reply]:  # fmt: skip
    """The answer on the fast path, then through ASGI (checked to have gone each way)."""
    before = counter[0]
    conn.send(request(method, path, headers, body=body))
    fast = conn.reply()
    assert counter[0] == before, "the fast path sent it through ASGI"
    conn.send(request(method, f"http://127.0.0.1:{gateway.port}{path}", headers, body=body))
    slow = conn.reply()
    assert counter[0] == before + 1, "the absolute-form target did not go through ASGI"
    return fast, slow


def same(fast: Reply, slow: Reply) -> None:
    assert fast.status == slow.status, (fast, slow)
    assert fast.comparable() == slow.comparable()
    for reply in (fast, slow):
        assert reply.header("date") is not None and reply.header("x-request-id")
    assert fast.body == slow.body


def test_refusals_are_the_same_as_through_asgi(
    conn: Conn, gateway: GatewayServer, http: httpx.Client, api_keys: dict[str, str],
    through_asgi: list[int],
) -> None:  # fmt: skip
    acct = create_account(http, api_keys["admin"])  # pro: 1000 credits
    service, read = api_keys["service"], api_keys["read"]
    big = b'{"resource": "api_call", "description": "' + b"x" * 20_000 + b'"}'
    ok = {"resource": "api_call"}
    cases: list[tuple[tuple[str, str, dict[str, str], bytes], int, str]] = []
    for name, good in (("consume", ok), ("check", ok), ("holds", {"amount": 5})):
        path = f"/v1/accounts/{acct}/{name}"
        cases += [
            (post(path, None, good), 401, "unauthorized"),
            (post(path, "qg_nope", good), 401, "unauthorized"),
            (post(path, read, good), 403, "forbidden"),
            (post(f"/v1/accounts/{new_account_id()}/{name}", service, good), 404, "account_not_found"),
            (post(f"/v1/accounts/bad%20id/{name}", service, good), 422, "invalid_request"),
            (post(path, service, {"resource": "gold"}), 422, "unknown_resource"),
            (post(path, service, {"resource": "api_call", "units": 0}), 422, "invalid_amount"),
            (post(path, service, b"{not json"), 422, "invalid_request"),
            (post(path, service, b""), 422, "invalid_request"),
            (post(path, service, big), 413, "payload_too_large"),
            (("GET", path, bearer(service), b""), 405, "method_not_allowed"),
        ]  # fmt: skip
    too_much = {"resource": "api_call", "units": 5000}
    cases += [
        (post(f"/v1/accounts/{acct}/consume", service, too_much), 402, "insufficient_credits"),
        (post(f"/v1/accounts/{acct}/holds", service, {"amount": 5000}), 402, "insufficient_credits"),
        (post(f"/v1/accounts/{acct}/holds", service, {"resource": "api_call", "amount": 1}),
         422, "invalid_request"),
    ]  # fmt: skip
    seen: dict[int, int] = {}
    for (method, path, headers, body), status, code in cases:
        fast, slow = both(conn, gateway, through_asgi, method, path, headers, body)
        same(fast, slow)
        assert fast.status == status, (path, body[:60], fast.body)
        assert fast.header("content-type") == "application/problem+json"
        assert fast.json()["code"] == code, (path, fast.json())
        seen[status] = seen.get(status, 0) + 1
        if status == 405:
            assert [h for h in fast.headers if h[0] == "allow"] == [("allow", "POST")]
    assert seen == {401: 6, 403: 3, 404: 3, 422: 16, 413: 3, 405: 3, 402: 2}
    assert balance(http, api_keys["admin"], acct) == 1000  # nothing was charged


def test_successes_replays_and_conflicts_are_the_same_as_through_asgi(
    conn: Conn, gateway: GatewayServer, http: httpx.Client, api_keys: dict[str, str],
    through_asgi: list[int],
) -> None:  # fmt: skip
    acct = create_account(http, api_keys["admin"])
    service = api_keys["service"]
    consume = f"/v1/accounts/{acct}/consume"
    # check: no state, the same bytes each way
    fast, slow = both(conn, gateway, through_asgi, *post(f"/v1/accounts/{acct}/check", service,
                                                        {"resource": "api_call", "units": 3}))  # fmt: skip
    same(fast, slow)
    assert (fast.status, fast.json()) == (200, {"allowed": True, "cost": 3, "available": 1000})
    # consume without a key: each way charges, answers of one shape
    fast, slow = both(
        conn, gateway, through_asgi, *post(consume, service, {"resource": "api_call"})
    )
    assert fast.status == slow.status == 200
    assert [h[0] for h in fast.headers] == [h[0] for h in slow.headers]
    assert (fast.json()["remaining"], slow.json()["remaining"]) == (999, 998)
    assert fast.header("ratelimit-limit") == "400"  # the burst
    # with an Idempotency-Key: charged once (on the fast path); both replays are the same
    for name, body, status in (
        ("consume", {"resource": "api_call", "units": 2}, 200),
        ("holds", {"amount": 7}, 201),
    ):
        key = f"k-{uuid.uuid4().hex}"
        method, path, headers, data = post(f"/v1/accounts/{acct}/{name}", service, body,
                                           Idempotency_Key=key)  # fmt: skip
        conn.send(request(method, path, headers, body=data))
        first = conn.reply()
        assert first.status == status and first.header("idempotent-replayed") is None
        fast, slow = both(conn, gateway, through_asgi, method, path, headers, data)
        same(fast, slow)
        assert fast.status == status and fast.header("idempotent-replayed") == "true"
        assert fast.json() == first.json()
        # the same key with another body: a conflict, both ways
        other = {**body, "units": 3} if name == "consume" else {"amount": 8}
        fast, slow = both(conn, gateway, through_asgi,
                          *post(path, service, other, Idempotency_Key=key))  # fmt: skip
        same(fast, slow)
        assert (fast.status, fast.json()["code"]) == (409, "idempotency_conflict")
    r = http.get(f"/v1/accounts/{acct}", headers=bearer(api_keys["admin"])).json()
    assert (r["balance"], r["reserved"]) == (1000 - 2 - 2, 7)


def test_rate_limited_is_the_same_as_through_asgi(
    conn: Conn, gateway: GatewayServer, http: httpx.Client, api_keys: dict[str, str],
    through_asgi: list[int],
) -> None:  # fmt: skip
    acct = create_account(http, api_keys["admin"], tier="free")  # burst 40
    consume = post(f"/v1/accounts/{acct}/consume", api_keys["service"], {"resource": "api_call"})
    conn.send(*(request(consume[0], consume[1], consume[2], body=consume[3]) for _ in range(45)))
    statuses = [conn.reply().status for _ in range(45)]
    assert statuses.count(200) >= 40 and statuses.count(429) >= 1
    fast, slow = both(conn, gateway, through_asgi, *consume)
    assert fast.status == slow.status == 429
    assert [h[0] for h in fast.headers] == [h[0] for h in slow.headers]
    assert fast.header("retry-after") is not None
    assert fast.json()["code"] == slow.json()["code"] == "rate_limited"


@pytest.fixture
def down_stack(
    migrated_database_url: str, api_keys: dict[str, str]
) -> Iterator[tuple[RedisProcess, GatewayServer]]:
    with redis_process() as redis_server:
        settings = gateway_settings(redis_server.url, migrated_database_url, "qgfrontdown")
        with running_gateway(settings) as gateway:
            yield redis_server, gateway


def test_backend_down_is_the_same_as_through_asgi(
    down_stack: tuple[RedisProcess, GatewayServer], api_keys: dict[str, str],
    through_asgi: list[int],
) -> None:  # fmt: skip
    redis_server, gateway = down_stack
    with httpx.Client(base_url=gateway.url) as http:
        acct = create_account(http, api_keys["admin"])
    redis_server.stop()
    conn = Conn(gateway)
    try:
        for name, body in (("consume", {"resource": "api_call"}), ("check", {"resource": "api_call"}),
                           ("holds", {"amount": 1})):  # fmt: skip
            call = post(f"/v1/accounts/{acct}/{name}", api_keys["service"], body)
            fast, slow = both(conn, gateway, through_asgi, *call)
            same(fast, slow)
            assert (fast.status, fast.json()["code"]) == (503, "backend_unavailable"), name
    finally:
        conn.close()


def test_the_hooks_reservations_are_answered_alike_either_way(
    conn: Conn, gateway: GatewayServer, http: httpx.Client, api_keys: dict[str, str],
    through_asgi: list[int],
) -> None:  # fmt: skip
    """Reserve mode runs as a task beside the charge's callbacks: its answers, refusals and
    the held reply alike, are the same whichever carrier brought the request."""
    acct = create_account(http, api_keys["admin"])  # pro: 1000 credits
    for extra in (
        {"X_Quota_Mode": "sometimes"},
        {"X_Quota_Mode": "reserve", "X_Quota_Units": "1001"},
        {"X_Quota_Mode": "reserve", "X_Request_Id": f"r-{uuid.uuid4()}"},
    ):
        fast, slow = both(
            conn, gateway, through_asgi, "GET", "/v1/authz", hook(api_keys, acct, **extra), None
        )
        if fast.status == 200:  # the second is the first's replay: the same hold
            assert slow.header("idempotent-replayed") == "true"
            slow.headers.remove(("idempotent-replayed", "true"))
        same(fast, slow)
    assert [fast.header(h) for h in ("x-quota-account", "x-quota-held")] == [acct, "1"]
    assert fast.header("x-quota-hold-id") is not None
    assert balance(http, api_keys["admin"], acct) == 1000
