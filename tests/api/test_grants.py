"""Explicit grants over HTTP: make (admin, written through), list in spend order, void; bad
terms refused with the field named and nothing written."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from tests.api.helpers import account, assert_problem, bearer, create_account
from tests.support.gateway import new_account_id

from quotagate.engine.grants import MAX_GRANTS


def grant(
    http: httpx.Client, key: str, acct: str, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return http.post(f"/v1/accounts/{acct}/grants", json=body, headers={**bearer(key), **headers})


def grants(http: httpx.Client, key: str, acct: str) -> dict[str, Any]:
    r = http.get(f"/v1/accounts/{acct}/grants", headers=bearer(key))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def void(http: httpx.Client, key: str, acct: str, grant_id: str, **headers: str) -> httpx.Response:
    url = f"/v1/accounts/{acct}/grants/{grant_id}/void"
    return http.post(url, json={}, headers={**bearer(key), **headers})


def spend(http: httpx.Client, service: str, acct: str, units: int) -> None:
    r = http.post(
        f"/v1/accounts/{acct}/consume",
        json={"resource": "api_call", "units": units},
        headers=bearer(service),
    )
    assert r.status_code == 200, r.text


def ledger_row(database_url: str, transaction_id: str) -> list[tuple[str, int, str]]:
    async def run() -> list[tuple[str, int, str]]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT account_id, amount, type FROM credit_transactions WHERE id = $1",
                transaction_id,
            )
            return [(r["account_id"], r["amount"], r["type"]) for r in rows]
        finally:
            await conn.close()

    return asyncio.run(run())


def test_a_grant_is_made_durable_and_listed_in_spend_order(
    http: httpx.Client, api_keys: dict[str, str], migrated_database_url: str
) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    r = grant(http, admin, acct, {
        "amount": 250, "source": "promotion", "priority": 10,
        "expires_at": expires.isoformat(), "description": "spring", "metadata": {"c": 1},
    })  # fmt: skip
    assert r.status_code == 201, r.text
    made = r.json()
    assert set(made) == {"grant_id", "transaction_id", "balance", "available", "replayed",
                         "durable", "expires_at"}  # fmt: skip
    assert (made["balance"], made["available"], made["replayed"]) == (1250, 1250, False)
    assert datetime.fromisoformat(made["expires_at"]) == expires.replace(
        microsecond=expires.microsecond // 1000 * 1000
    )  # Redis keeps whole milliseconds
    assert made["durable"] is True
    assert ledger_row(migrated_database_url, made["transaction_id"]) == [(acct, 250, "grant")]

    listed = grants(http, api_keys["read"], acct)
    assert [(g["id"], g["source"], g["priority"], g["amount"], g["remaining"])
            for g in listed["grants"]] == [
        (made["grant_id"], "promotion", 10, 250, 250), ("monthly", "renewal", 50, 1000, 1000),
    ]  # fmt: skip
    first = listed["grants"][0]
    assert datetime.fromisoformat(first["expires_at"]) == expires
    assert datetime.fromisoformat(first["created_at"]) <= datetime.now(UTC)
    assert listed["grants"][1]["created_at"] is None  # a standing grant
    assert datetime.fromisoformat(listed["next_expiry"]) == expires

    view = account(http, admin, acct)
    assert (view["grants"], view["next_expiry"]) == (listed["grants"], listed["next_expiry"])
    assert view["balance"] == 1250


def test_spends_take_the_lowest_priority_grant_first(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    first = grant(http, admin, acct, {"amount": 30, "priority": 5}).json()["grant_id"]
    last = grant(http, admin, acct, {"amount": 30, "priority": 90}).json()["grant_id"]
    spend(http, api_keys["service"], acct, 40)
    remaining = {g["id"]: g["remaining"] for g in grants(http, admin, acct)["grants"]}
    assert remaining == {"monthly": 990, last: 30}  # the first grant is spent and gone
    assert first not in remaining
    assert grants(http, admin, acct)["next_expiry"] is None


def test_expires_in_seconds_counts_from_now(http: httpx.Client, api_keys: dict[str, str]) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    before = datetime.now(UTC)
    assert grant(http, admin, acct, {"amount": 5, "expires_in_seconds": 3600}).status_code == 201
    after = datetime.now(UTC)
    [g] = [g for g in grants(http, admin, acct)["grants"] if g["id"] != "monthly"]
    expires = datetime.fromisoformat(g["expires_at"])
    slack = timedelta(milliseconds=5)
    assert before + timedelta(hours=1) - slack <= expires <= after + timedelta(hours=1) + slack
    assert (g["source"], g["priority"]) == ("promotion", 50)  # the defaults


def test_an_idempotency_key_replays_the_grant(http: httpx.Client, api_keys: dict[str, str]) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    body = {"amount": 70, "source": "purchase"}
    first = grant(http, admin, acct, body, **{"Idempotency-Key": "pack-1"})
    again = grant(http, admin, acct, body, **{"Idempotency-Key": "pack-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == {**first.json(), "replayed": True}
    assert account(http, admin, acct)["balance"] == 1070
    other = grant(http, admin, acct, {**body, "amount": 71}, **{"Idempotency-Key": "pack-1"})
    assert_problem(other, 409, "idempotency_conflict")
    assert account(http, admin, acct)["balance"] == 1070


def _past() -> str:
    return (datetime.now(UTC) - timedelta(minutes=1)).isoformat()


def _soon() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).isoformat()


BAD_TERMS: list[tuple[dict[str, Any], str, str, str]] = [
    # body, code, field, words the detail says
    ({"amount": 5, "priority": 101}, "invalid_request", "priority", "from 0 to 100"),
    ({"amount": 5, "priority": -1}, "invalid_request", "priority", "from 0 to 100"),
    ({"amount": 5, "priority": "low"}, "invalid_request", "priority", "from 0 to 100"),
    ({"amount": 5, "source": "gift"}, "invalid_request", "source", "promotion, refund"),
    ({"amount": 5, "expires_at": "last tuesday"}, "invalid_request", "expires_at", "RFC 3339"),
    ({"amount": 5, "expires_at": "2030-01-01T00:00:00"}, "invalid_request", "expires_at",
     "with a zone"),
    ({"amount": 5, "expires_at": "PAST"}, "invalid_request", "expires_at", "in the past"),
    ({"amount": 5, "expires_at": "SOON", "expires_in_seconds": 60}, "invalid_request",
     "expires_at", "not both"),
    ({"amount": 5, "expires_in_seconds": 0}, "invalid_request", "expires_in_seconds",
     "at least 1"),
    ({"amount": 5, "description": "a\x00b"}, "invalid_request", "description", "NUL"),
    ({"amount": 0}, "invalid_amount", "amount", ">= 1"),
    ({"amount": 5.5}, "invalid_amount", "amount", "int"),
    ({"amount": 5, "metadata": [1]}, "invalid_request", "metadata", "object"),
    ({"amount": 5, "colour": "red"}, "invalid_request", "colour", "unknown field"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "code", "field", "words"), BAD_TERMS)
def test_bad_terms_are_refused_by_field_and_write_nothing(
    http: httpx.Client,
    api_keys: dict[str, str],
    body: dict[str, Any],
    code: str,
    field: str,
    words: str,
) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    before = account(http, admin, acct)
    times = {"PAST": _past(), "SOON": _soon()}
    sent = {k: times.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    problem = assert_problem(grant(http, admin, acct, sent), 422, code)
    assert problem.get("field") == field, problem
    assert words.lower() in problem["detail"].lower(), problem["detail"]
    after = account(http, admin, acct)
    assert (after["balance"], after["grants"]) == (before["balance"], before["grants"])
    assert after["recent_transactions"] == before["recent_transactions"]


def test_a_grant_for_an_unknown_account_is_404(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    acct = new_account_id()
    assert_problem(grant(http, api_keys["admin"], acct, {"amount": 5}), 404, "account_not_found")
    r = http.get(f"/v1/accounts/{acct}/grants", headers=bearer(api_keys["read"]))
    assert_problem(r, 404, "account_not_found")


def test_void_takes_back_what_is_left(
    http: httpx.Client, api_keys: dict[str, str], migrated_database_url: str
) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    made = grant(http, admin, acct, {"amount": 50, "priority": 0}).json()
    spend(http, api_keys["service"], acct, 20)
    r = void(http, admin, acct, made["grant_id"], **{"Idempotency-Key": "v-1"})
    assert r.status_code == 200, r.text
    voided = r.json()
    assert set(voided) == {"transaction_id", "voided", "balance", "available", "replayed",
                           "durable"}  # fmt: skip
    assert (voided["voided"], voided["balance"], voided["available"]) == (30, 1000, 1000)
    assert voided["replayed"] is False and voided["durable"] is True
    assert ledger_row(migrated_database_url, voided["transaction_id"]) == [(acct, -30, "adjust")]
    again = void(http, admin, acct, made["grant_id"], **{"Idempotency-Key": "v-1"})
    assert again.json() == {**voided, "replayed": True}
    assert again.headers["idempotent-replayed"] == "true"
    assert [g["id"] for g in grants(http, admin, acct)["grants"]] == ["monthly"]
    view = account(http, admin, acct)
    assert view["balance"] == 1000
    assert [(t["type"], t["amount"]) for t in view["recent_transactions"][:1]] == [("adjust", -30)]
    assert_problem(void(http, admin, acct, made["grant_id"]), 404, "grant_not_found")


@pytest.mark.parametrize(
    "grant_id", ["monthly", "purchased", "0190c1d2-aaaa-7bbb-8ccc-ddddeeeeffff"]
)
def test_void_of_a_grant_the_account_does_not_hold_is_404(
    http: httpx.Client, api_keys: dict[str, str], grant_id: str
) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    assert_problem(void(http, admin, acct, grant_id), 404, "grant_not_found")
    assert account(http, admin, acct)["balance"] == 1000


def test_void_of_another_accounts_grant_is_404(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    admin = api_keys["admin"]
    owner, other = create_account(http, admin), create_account(http, admin)
    made = grant(http, admin, owner, {"amount": 9}).json()
    assert_problem(void(http, admin, other, made["grant_id"]), 404, "grant_not_found")
    assert account(http, admin, owner)["balance"] == 1009


def test_void_with_a_bad_description_writes_nothing(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    made = grant(http, admin, acct, {"amount": 9}).json()
    url = f"/v1/accounts/{acct}/grants/{made['grant_id']}/void"
    r = http.post(url, json={"description": "x\x00"}, headers=bearer(admin))
    assert assert_problem(r, 422, "invalid_request")["field"] == "description"
    assert account(http, admin, acct)["balance"] == 1009


def test_service_and_read_keys_may_list_but_not_grant_or_void(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    made = grant(http, admin, acct, {"amount": 9}).json()
    for scope in ("service", "read"):
        assert_problem(grant(http, api_keys[scope], acct, {"amount": 5}), 403, "forbidden")
        assert_problem(void(http, api_keys[scope], acct, made["grant_id"]), 403, "forbidden")
        assert len(grants(http, api_keys[scope], acct)["grants"]) == 2
    assert account(http, admin, acct)["balance"] == 1009


def test_the_openapi_document_lists_the_grant_endpoints(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    paths = doc["paths"]
    assert set(paths["/v1/accounts/{account_id}/grants"]) == {"get", "post"}
    assert set(paths["/v1/accounts/{account_id}/grants/{grant_id}/void"]) == {"post"}
    made = paths["/v1/accounts/{account_id}/grants"]["post"]
    assert {"201", "200", "403", "404", "422"} <= set(made["responses"])
    request = doc["components"]["schemas"]["GrantRequest"]["properties"]
    assert request["priority"]["maximum"] == 100
    one_expiry = {"required": ["expires_at", "expires_in_seconds"]}
    assert doc["components"]["schemas"]["GrantRequest"]["not"] == one_expiry
    assert "next_expiry" in doc["components"]["schemas"]["AccountOut"]["properties"]


def test_an_expired_grant_leaves_the_list_and_the_balance(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    made = grant(http, admin, acct, {"amount": 60, "expires_in_seconds": 1}).json()
    assert account(http, admin, acct)["balance"] == 1060
    time.sleep(1.1)
    listed = grants(http, admin, acct)
    assert ([g["id"] for g in listed["grants"]], listed["next_expiry"]) == (["monthly"], None)
    assert account(http, admin, acct)["balance"] == 1000
    assert_problem(void(http, admin, acct, made["grant_id"]), 404, "grant_not_found")


def test_the_grant_past_the_most_an_account_may_hold_is_409(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    for _ in range(MAX_GRANTS):
        assert grant(http, admin, acct, {"amount": 1}).status_code == 201
    assert_problem(grant(http, admin, acct, {"amount": 1}), 409, "too_many_grants")
    view = account(http, admin, acct)
    assert (view["balance"], len(view["grants"])) == (1000 + MAX_GRANTS, MAX_GRANTS + 1)


def test_a_relative_expiry_replays_under_its_idempotency_key(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    body = {"amount": 8, "expires_in_seconds": 3600}
    first = grant(http, admin, acct, body, **{"Idempotency-Key": "trial-1"})
    assert first.status_code == 201, first.text
    time.sleep(0.01)
    again = grant(http, admin, acct, body, **{"Idempotency-Key": "trial-1"})
    assert again.status_code == 200, again.text
    assert again.json() == {**first.json(), "replayed": True}
