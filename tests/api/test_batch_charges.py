"""POST /v1/charges: one answer per charge, in order, each what a single consume would answer.

The parity test runs the same charges twice on twin accounts (same tier, same balance): once
as one batch, once as single consumes one after the other, and compares every answer.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from tests.api.helpers import assert_problem, balance, bearer, create_account
from tests.support.gateway import GatewayServer, new_account_id

from quotagate.config import load_config

Item = dict[str, Any]


def _twins(http: httpx.Client, admin: str, **body: Any) -> tuple[str, str]:
    return create_account(http, admin, **body), create_account(http, admin, **body)


def _single(http: httpx.Client, key: str, item: Any) -> httpx.Response:
    """The item as a single consume: its account in the path, its key in the header."""
    if not isinstance(item, dict):
        return http.post(
            "/v1/accounts/nobody/consume", content=json.dumps(item), headers=bearer(key)
        )
    body = {k: v for k, v in item.items() if k not in ("account_id", "idempotency_key")}
    headers = bearer(key)
    if "idempotency_key" in item:
        headers["Idempotency-Key"] = item["idempotency_key"]
    return http.post(f"/v1/accounts/{item['account_id']}/consume", json=body, headers=headers)


def _batch(http: httpx.Client, key: str, items: list[Any]) -> list[dict[str, Any]]:
    r = http.post("/v1/charges", json={"charges": items}, headers=bearer(key))
    assert r.status_code == 200, r.text
    results: list[dict[str, Any]] = r.json()["results"]
    assert len(results) == len(items)
    return results


def _as_single_answer(r: httpx.Response) -> dict[str, Any]:
    """A consume's answer in the batch's item form (transaction ids compared apart)."""
    if r.status_code != 200:
        return {"status": r.status_code, "problem": r.json()}
    body = r.json()
    out = {"status": 200, "cost": body["cost"], "remaining": body["remaining"]}
    if r.headers.get("idempotent-replayed") == "true":
        out["replayed"] = True
    return out


def _without_txn(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "transaction_id"}


def _script(a: str, b: str, banned: str, missing: str) -> list[Any]:
    """Charges that meet every answer a consume gives: free tier, 100 credits each."""
    return [
        {"account_id": a, "resource": "api_call", "units": 30},
        {"account_id": b, "resource": "unknown_thing"},
        {"account_id": a, "resource": "premium_feature", "units": 10},
        {"account_id": b, "resource": "api_call", "units": 0},
        {"account_id": a, "resource": "premium_feature", "units": 5},
        {"account_id": b, "resource": "api_call", "units": 1.5},
        {"account_id": a, "resource": "api_call", "units": 15, "idempotency_key": "k-1"},
        {"account_id": a, "resource": "api_call", "units": 1, "description": "after a keyed one"},
        {"account_id": a, "resource": "api_call", "units": 15, "idempotency_key": "k-1"},
        {"account_id": a, "resource": "api_call", "units": 16, "idempotency_key": "k-1"},
        {"account_id": b, "resource": "api_call", "units": "7"},
        {"account_id": b, "resource": "api_call", "colour": "blue"},
        {"account_id": "not an id!", "resource": "api_call"},
        {"account_id": missing, "resource": "api_call"},
        {"account_id": banned, "resource": "api_call"},
        {"account_id": b, "resource": "api_call", "idempotency_key": "bad key with spaces"},
        {"account_id": b, "resource": "api_call", "metadata": {"x": "y" * 5000}},
        5,
        {"account_id": b, "resource": "file_upload", "units": 3, "metadata": {"job": 7}},
        {"account_id": a, "resource": "api_call", "units": 4},
    ]


def test_every_answer_is_what_a_single_consume_answers(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    admin, service = api_keys["admin"], api_keys["service"]
    a1, a2 = _twins(http, admin, tier="free")
    b1, b2 = _twins(http, admin, tier="free")
    banned1, banned2 = _twins(http, admin, tier="free", status="banned")
    missing = new_account_id()
    batch = _batch(http, service, _script(a1, b1, banned1, missing))
    alone = [
        _as_single_answer(_single(http, service, i)) for i in _script(a2, b2, banned2, missing)
    ]

    assert [_without_txn(r) for r in batch] == alone
    statuses = [r["status"] for r in batch]
    assert statuses == [200, 422, 200, 422, 402, 422, 200, 200, 200, 409, 422, 422, 422, 404,
                        403, 422, 422, 422, 200, 200]  # fmt: skip
    assert batch[8]["replayed"] is True
    assert batch[8]["transaction_id"] == batch[6]["transaction_id"]
    assert batch[4]["problem"]["available"] == 20  # 100 - 30 - 50: the earlier charges counted
    assert [balance(http, admin, x) for x in (a1, a2, b1, b2)] == [0, 0, 94, 94]


def test_charges_of_one_account_keep_their_order_around_keyed_ones(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    """A keyless charge after a keyed one of the same account runs after it: in this order the
    third charge finds 10 credits; run before the keyed one it would have found 40."""
    acct = create_account(http, api_keys["admin"], tier="free")
    items = [
        {"account_id": acct, "resource": "api_call", "units": 60},
        {"account_id": acct, "resource": "api_call", "units": 30, "idempotency_key": "o-1"},
        {"account_id": acct, "resource": "api_call", "units": 20},
        {"account_id": acct, "resource": "api_call", "units": 10, "idempotency_key": "o-2"},
        {"account_id": acct, "resource": "api_call", "units": 5},
    ]
    results = _batch(http, api_keys["service"], items)
    assert [r["status"] for r in results] == [200, 200, 402, 200, 402]
    assert [r.get("remaining") for r in results] == [40, 10, None, 0, None]
    assert results[2]["problem"]["available"] == 10


def test_item_keys_are_the_consume_endpoints_keys(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    """An item's key on an account is the key a single consume of that account would carry:
    either one replays the other; the same key on another account is another charge."""
    admin, service = api_keys["admin"], api_keys["service"]
    acct, other = _twins(http, admin, tier="free")
    first = _single(http, service, {"account_id": acct, "resource": "api_call",
                                    "idempotency_key": "shared"})  # fmt: skip
    assert first.status_code == 200
    results = _batch(http, service, [
        {"account_id": acct, "resource": "api_call", "idempotency_key": "shared"},
        {"account_id": other, "resource": "api_call", "idempotency_key": "shared"},
        {"account_id": acct, "resource": "api_call", "idempotency_key": "fresh"},
    ])  # fmt: skip
    assert results[0] == {**first.json(), "status": 200, "replayed": True}
    assert results[1].get("replayed") is None and results[1]["status"] == 200
    again = _single(http, service, {"account_id": acct, "resource": "api_call",
                                    "idempotency_key": "fresh"})  # fmt: skip
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["transaction_id"] == results[2]["transaction_id"]
    assert [balance(http, admin, x) for x in (acct, other)] == [98, 99]


def test_a_malformed_item_is_refused_alone(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"], tier="free")
    items = [
        {"account_id": acct, "resource": "api_call", "units": 2},
        {"resource": "api_call"},
        [],
        {"account_id": acct, "resource": "api_call", "units": -1},
        {"account_id": acct, "resource": "api_call", "units": 3},
    ]
    results = _batch(http, api_keys["service"], items)
    assert [r["status"] for r in results] == [200, 422, 422, 422, 200]
    assert [results[i]["problem"]["code"] for i in (1, 2, 3)] == [
        "invalid_request", "invalid_request", "invalid_amount",
    ]  # fmt: skip
    assert results[3]["problem"]["field"] == "units"
    assert balance(http, api_keys["admin"], acct) == 95


def _malformed_requests(acct: str, max_charges: int) -> list[tuple[dict[str, Any], int, str]]:
    ok = {"account_id": acct, "resource": "api_call"}
    body = {"charges": [ok]}
    return [
        ({"content": b'{"charges": [' + json.dumps(ok).encode() + b", }"}, 422, "invalid_request"),
        ({"content": b"[]"}, 422, "invalid_request"),
        ({"content": b""}, 422, "invalid_request"),
        ({"json": {"charges": ok}}, 422, "invalid_request"),
        ({"json": {"charges": []}}, 422, "invalid_request"),
        ({"json": {**body, "atomic": True}}, 422, "invalid_request"),
        ({"json": {"charges": [ok] * (max_charges + 1)}}, 422, "invalid_request"),
        ({"json": body, "headers": {"Idempotency-Key": "whole"}}, 422, "invalid_request"),
        ({"json": {"charges": [ok], "pad": "x" * (5 * 1024 * 1024)}}, 413, "payload_too_large"),
    ]


def test_a_malformed_request_writes_nothing(
    http: httpx.Client, api_keys: dict[str, str], gateway: GatewayServer
) -> None:
    admin, service = api_keys["admin"], api_keys["service"]
    acct = create_account(http, admin, tier="free")
    max_charges = load_config().batch.max_charges
    cases = _malformed_requests(acct, max_charges)
    for kwargs, status, code in cases:
        headers = {**bearer(service), **kwargs.pop("headers", {})}
        r = http.post("/v1/charges", headers=headers, **kwargs)
        assert_problem(r, status, code)
    assert balance(http, admin, acct) == 100
    history = http.get(f"/v1/accounts/{acct}/transactions", headers=bearer(admin)).json()
    assert [t["type"] for t in history["transactions"]] == ["grant"]


def test_the_largest_batch_is_answered_in_full(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    """max_charges charges over 10 accounts of 100 credits: exactly 1,000 credits charged."""
    accounts = [create_account(http, api_keys["admin"], tier="enterprise") for _ in range(10)]
    n = load_config().batch.max_charges
    items = [{"account_id": accounts[i % 10], "resource": "api_call"} for i in range(n)]
    results = _batch(http, api_keys["service"], items)
    assert [r["status"] for r in results] == [200] * n
    per_account = n // 10
    assert sorted(r["remaining"] for r in results[:10]) == [10000 - 1] * 10
    assert [r["remaining"] for r in results[-10:]] == [10000 - per_account] * 10
