"""POST /v1/accounts/{id}/credits: money in, written through to Postgres."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest
from tests.api.helpers import assert_problem, balance, bearer, create_account
from tests.support.gateway import new_account_id


def ledger_rows(database_url: str, transaction_id: str) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return list(
                await conn.fetch(
                    "SELECT account_id, amount, type, description FROM credit_transactions "
                    "WHERE id = $1",
                    transaction_id,
                )
            )
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.mark.parametrize("kind", ["grant", "earn"])
def test_admin_grant_and_earn_are_durable(
    http: httpx.Client, api_keys: dict[str, str], migrated_database_url: str, kind: str
) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    r = http.post(
        f"/v1/accounts/{acct}/credits",
        json={"amount": 250, "type": kind, "description": "bonus", "metadata": {"k": 1}},
        headers=bearer(admin),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"transaction_id", "balance", "durable"}
    assert (body["balance"], body["durable"]) == (1250, True)
    rows = ledger_rows(migrated_database_url, body["transaction_id"])
    assert [(x["account_id"], x["amount"], x["type"]) for x in rows] == [(acct, 250, kind)]
    assert balance(http, admin, acct) == 1250


def test_service_may_refund_but_not_grant(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"])
    service = bearer(api_keys["service"])
    url = f"/v1/accounts/{acct}/credits"
    assert_problem(
        http.post(url, json={"amount": 5, "type": "grant"}, headers=service), 403, "forbidden"
    )
    assert_problem(
        http.post(url, json={"amount": 5, "type": "earn"}, headers=service), 403, "forbidden"
    )
    r = http.post(url, json={"amount": 5, "type": "refund"}, headers=service)
    assert r.status_code == 200 and r.json()["balance"] == 1005
    assert balance(http, api_keys["admin"], acct) == 1005


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"amount": 0, "type": "grant"}, "invalid_amount"),
        ({"amount": -5, "type": "grant"}, "invalid_amount"),
        ({"amount": 1.5, "type": "grant"}, "invalid_amount"),
        ({"amount": 10.0, "type": "grant"}, "invalid_amount"),
        ({"amount": "10", "type": "grant"}, "invalid_amount"),
        ({"amount": True, "type": "grant"}, "invalid_amount"),
        ({"amount": None, "type": "grant"}, "invalid_amount"),
        ({"amount": 10**12 + 1, "type": "grant"}, "invalid_amount"),
        ({"amount": 10**30, "type": "grant"}, "invalid_amount"),
        ({"type": "grant"}, "invalid_request"),
        ({"amount": 5}, "invalid_request"),
        ({"amount": 5, "type": "adjust"}, "invalid_request"),
        ({"amount": 5, "type": "spend"}, "invalid_request"),
        ({"amount": 5, "type": "grant", "extra": 1}, "invalid_request"),
        ({"amount": 5, "type": "grant", "metadata": [1]}, "invalid_request"),
        ({"amount": 5, "type": "grant", "metadata": {"x": "y" * 5000}}, "invalid_request"),
        ({"amount": 5, "type": "grant", "description": "d" * 1001}, "invalid_request"),
    ],
)
def test_bad_credit_writes_nothing(
    http: httpx.Client, api_keys: dict[str, str], body: object, code: str
) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    r = http.post(f"/v1/accounts/{acct}/credits", json=body, headers=bearer(admin))
    assert_problem(r, 422, code)
    history = http.get(f"/v1/accounts/{acct}/transactions", headers=bearer(admin)).json()
    assert [t["type"] for t in history["transactions"]] == ["grant"]  # the opening grant only
    assert balance(http, admin, acct) == 1000


def test_credit_above_the_balance_cap_is_422(http: httpx.Client, api_keys: dict[str, str]) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    url = f"/v1/accounts/{acct}/credits"
    for _ in range(1001):  # 10^15 / 10^12 grants fill the bucket
        r = http.post(url, json={"amount": 10**12, "type": "grant"}, headers=bearer(admin))
        if r.status_code != 200:
            break
    assert_problem(r, 422, "balance_limit_exceeded")


def test_credit_unknown_account_is_404(http: httpx.Client, api_keys: dict[str, str]) -> None:
    r = http.post(
        f"/v1/accounts/{new_account_id()}/credits",
        json={"amount": 5, "type": "grant"},
        headers=bearer(api_keys["admin"]),
    )
    assert_problem(r, 404, "account_not_found")


def test_credit_idempotency(http: httpx.Client, api_keys: dict[str, str]) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    url = f"/v1/accounts/{acct}/credits"
    headers = {**bearer(admin), "Idempotency-Key": "grant-42"}
    first = http.post(url, json={"amount": 40, "type": "grant"}, headers=headers)
    again = http.post(url, json={"amount": 40, "type": "grant"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["transaction_id"] == first.json()["transaction_id"]
    assert balance(http, admin, acct) == 1040
    conflict = http.post(url, json={"amount": 41, "type": "grant"}, headers=headers)
    assert_problem(conflict, 409, "idempotency_conflict")
    bad_key = http.post(
        url,
        json={"amount": 1, "type": "grant"},
        headers={**bearer(admin), "Idempotency-Key": "a" * 256},
    )
    assert_problem(bad_key, 422, "invalid_request")
    assert balance(http, admin, acct) == 1040


def test_body_size_cap_is_413(http: httpx.Client, api_keys: dict[str, str]) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    url = f"/v1/accounts/{acct}/credits"
    big = b'{"amount": 5, "type": "grant", "description": "' + b"x" * 20000 + b'"}'
    r = http.post(url, content=big, headers={**bearer(admin), "Content-Type": "application/json"})
    assert_problem(r, 413, "payload_too_large")

    def chunks() -> object:
        yield b'{"amount": 5, "type": "grant", "description": "'
        for _ in range(40):
            yield b"y" * 1000
        yield b'"}'

    # Chunked, without Content-Length: refused once the cap is passed, all the same.
    r = http.post(url, content=chunks(), headers=bearer(admin))  # type: ignore[arg-type]
    assert_problem(r, 413, "payload_too_large")
    assert balance(http, admin, acct) == 1000
