"""POST /v1/accounts/{id}/credits: money in, written through to Postgres."""

from __future__ import annotations

import asyncio
import uuid

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


def consume(http: httpx.Client, service: str, acct: str, units: int) -> str:
    r = http.post(
        f"/v1/accounts/{acct}/consume",
        json={"resource": "premium_feature", "units": units},
        headers=bearer(service),
    )
    assert r.status_code == 200, r.text
    transaction_id: str = r.json()["transaction_id"]
    return transaction_id


def refund(
    http: httpx.Client, key: str, acct: str, amount: int, refund_of: str | None, **headers: str
) -> httpx.Response:
    body: dict[str, object] = {"amount": amount, "type": "refund"}
    if refund_of is not None:
        body["refund_of"] = refund_of
    return http.post(f"/v1/accounts/{acct}/credits", json=body, headers={**bearer(key), **headers})


def test_service_may_refund_a_spend_but_not_grant(
    http: httpx.Client, api_keys: dict[str, str], migrated_database_url: str
) -> None:
    acct = create_account(http, api_keys["admin"])
    service = api_keys["service"]
    url = f"/v1/accounts/{acct}/credits"
    for kind in ("grant", "earn"):
        r = http.post(url, json={"amount": 5, "type": kind}, headers=bearer(service))
        assert_problem(r, 403, "forbidden")
    spend = consume(http, service, acct, 2)  # 10 credits
    r = refund(http, service, acct, 4, spend)
    assert r.status_code == 200, r.text
    assert (r.json()["balance"], r.json()["durable"]) == (994, True)
    rows = ledger_rows(migrated_database_url, r.json()["transaction_id"])
    assert [(x["account_id"], x["amount"], x["type"]) for x in rows] == [(acct, 4, "refund")]
    assert balance(http, api_keys["admin"], acct) == 994


def test_a_service_key_cannot_mint_money(http: httpx.Client, api_keys: dict[str, str]) -> None:
    """A refund of 10^12 to any account: refused, whatever spend it names or not."""
    admin, service = api_keys["admin"], api_keys["service"]
    acct, other = create_account(http, admin), create_account(http, admin)
    spend = consume(http, service, acct, 1)  # 5 credits
    spend_of_other = consume(http, service, other, 1)
    assert_problem(refund(http, service, acct, 10**12, None), 422, "invalid_request")
    assert_problem(refund(http, service, acct, 10**12, spend), 409, "refund_exceeds_spend")
    unknown = str(uuid.uuid4())
    missing = assert_problem(refund(http, service, acct, 1, unknown), 404, "spend_not_found")
    foreign = assert_problem(refund(http, service, acct, 1, spend_of_other), 404, "spend_not_found")
    # The same answer for a spend of another account as for none: nothing to learn from it.
    missing["detail"] = missing["detail"].replace(unknown, "<id>")
    foreign["detail"] = foreign["detail"].replace(spend_of_other, "<id>")
    assert missing == foreign
    opening = http.get(f"/v1/accounts/{acct}/transactions", headers=bearer(admin)).json()
    grant_id = next(t["id"] for t in opening["transactions"] if t["type"] == "grant")
    assert_problem(refund(http, service, acct, 1, grant_id), 404, "spend_not_found")
    assert_problem(refund(http, service, acct, 1, "not-a-uuid"), 422, "invalid_request")
    assert (balance(http, admin, acct), balance(http, admin, other)) == (995, 995)


def test_refunds_of_a_spend_stop_at_its_cost(http: httpx.Client, api_keys: dict[str, str]) -> None:
    service = api_keys["service"]
    acct = create_account(http, api_keys["admin"])
    spend = consume(http, service, acct, 3)  # 15 credits
    assert refund(http, service, acct, 10, spend).status_code == 200
    over = assert_problem(refund(http, service, acct, 6, spend), 409, "refund_exceeds_spend")
    assert (over["cost"], over["refunded"], over["refundable"]) == (15, 10, 5)
    assert refund(http, service, acct, 5, spend).status_code == 200
    assert_problem(refund(http, service, acct, 1, spend), 409, "refund_exceeds_spend")
    assert balance(http, api_keys["admin"], acct) == 1000


def test_a_refund_is_replayed_per_idempotency_key(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    service = api_keys["service"]
    acct = create_account(http, api_keys["admin"])
    spend = consume(http, service, acct, 1)
    first = refund(http, service, acct, 5, spend, **{"Idempotency-Key": "rf-7"})
    again = refund(http, service, acct, 5, spend, **{"Idempotency-Key": "rf-7"})
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["transaction_id"] == first.json()["transaction_id"]
    other = consume(http, service, acct, 1)
    conflict = refund(http, service, acct, 5, other, **{"Idempotency-Key": "rf-7"})
    assert_problem(conflict, 409, "idempotency_conflict")
    assert balance(http, api_keys["admin"], acct) == 995


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
        ({"amount": 5, "type": "refund"}, "invalid_request"),
        ({"amount": 5, "type": "grant", "refund_of": str(uuid.uuid4())}, "invalid_request"),
        ({"amount": 5, "type": "refund", "refund_of": 17}, "invalid_request"),
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


def _refused_without_a_write(
    http: httpx.Client, admin: str, body: dict[str, object], code: str
) -> dict[str, object]:
    acct = create_account(http, admin)
    r = http.post(f"/v1/accounts/{acct}/credits", json=body, headers=bearer(admin))
    problem = assert_problem(r, 422, code)
    history = http.get(f"/v1/accounts/{acct}/transactions", headers=bearer(admin)).json()
    assert [t["type"] for t in history["transactions"]] == ["grant"]  # the opening grant only
    assert balance(http, admin, acct) == 1000
    return problem


@pytest.mark.parametrize(
    "body",
    [
        {"amount": -5, "type": "grant"},
        {"type": "earn", "amount": -5},
        {"type": "refund", "amount": -1, "refund_of": str(uuid.uuid4())},
        {"amount": -(10**12)},
    ],
)
def test_a_negative_amount_is_told_it_needs_an_adjustment(
    http: httpx.Client, api_keys: dict[str, str], body: dict[str, object]
) -> None:
    problem = _refused_without_a_write(http, api_keys["admin"], body, "invalid_amount")
    assert problem["field"] == "amount"
    assert problem["detail"] == (
        'a negative amount needs "type": "adjust", and adjustments are made by operators with '
        "the CLI: `quotagate grant --type adjust ACCOUNT_ID -- -5`; a grant, earn or refund "
        "takes 1 to 10^12"
    )


@pytest.mark.parametrize(
    "body",
    [
        {"amount": -5, "type": "adjust"},
        {"type": "adjust", "amount": -5},
        {"amount": 5, "type": "adjust"},
    ],
)
def test_an_adjustment_is_refused_for_its_type(
    http: httpx.Client, api_keys: dict[str, str], body: dict[str, object]
) -> None:
    problem = _refused_without_a_write(http, api_keys["admin"], body, "invalid_request")
    assert problem["field"] == "type"
    assert problem["detail"] == (
        '"type": "adjust" is not taken over HTTP: adjustments, the only credits with a '
        "negative amount, are made by operators with the CLI: "
        "`quotagate grant --type adjust ACCOUNT_ID -- -5`"
    )


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"amount": 0, "type": "grant"}, "Expected `int` >= 1 - at `$.amount`"),
        ({"type": "spend", "amount": 5}, "Invalid enum value 'spend' - at `$.type`"),
        ({"amount": -5.5, "type": "grant"}, "Expected `int`, got `float` - at `$.amount`"),
    ],
)
def test_other_bad_amounts_and_types_keep_the_decoders_sentence(
    http: httpx.Client, api_keys: dict[str, str], body: dict[str, object], detail: str
) -> None:
    code = "invalid_request" if "type" in detail else "invalid_amount"
    assert _refused_without_a_write(http, api_keys["admin"], body, code)["detail"] == detail


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
