"""Pools over HTTP: members created under their pool with a limit, their charges paid by the
pool (consume, batch, the hook), refusals named, and the same bytes on the fast path as
through ASGI."""

from __future__ import annotations

from typing import Any

import httpx
from tests.api.helpers import account, assert_problem, bearer, create_account
from tests.api.test_front_parity import both, post, same
from tests.api.test_hook_protocol import Conn, hook
from tests.support.gateway import GatewayServer, new_account_id


def put(http: httpx.Client, admin: str, acct: str, **body: Any) -> httpx.Response:
    return http.put(f"/v1/accounts/{acct}", json=body, headers=bearer(admin))


def consume(http: httpx.Client, service: str, acct: str, units: int) -> httpx.Response:
    return http.post(
        f"/v1/accounts/{acct}/consume",
        json={"resource": "api_call", "units": units},
        headers=bearer(service),
    )


def test_a_member_spends_its_pool_within_its_limit(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    admin, service = api_keys["admin"], api_keys["service"]
    pool = create_account(http, admin)  # pro: 1000 credits
    member = f"{pool}~alice"
    r = put(http, admin, member, tier="free", member_limit=50)
    assert r.status_code == 201, r.text
    view = account(http, admin, member)
    assert view["membership"] == {
        "pool_id": pool, "member_limit": 50, "own_credits_first": False, "used": 0,
    }  # fmt: skip
    r = consume(http, service, member, 30)
    assert r.status_code == 200, r.text
    assert r.json()["remaining"] == 20
    assert r.json()["pool"] == {
        "pool_id": pool, "paid": 30, "pool_balance": 970, "limit_remaining": 20,
    }  # fmt: skip
    body = assert_problem(consume(http, service, member, 21), 402, "member_limit_reached")
    assert (body["required"], body["available"]) == (21, 20)
    assert account(http, admin, pool)["balance"] == 970
    assert account(http, admin, member)["membership"]["used"] == 30
    assert account(http, admin, pool)["membership"] is None

    # lift the limit: the pool's balance is then the only bound
    assert put(http, admin, member, member_limit=None).status_code == 200
    assert account(http, admin, member)["membership"]["member_limit"] is None
    r = consume(http, service, member, 100)
    assert r.status_code == 200 and r.json()["pool"]["limit_remaining"] is None


def test_member_settings_are_refused_where_they_do_not_belong(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    admin = api_keys["admin"]
    plain = create_account(http, admin)
    body = assert_problem(put(http, admin, plain, member_limit=5), 422, "invalid_request")
    assert "member" in body["detail"]
    assert_problem(put(http, admin, f"{new_account_id()}~bob"), 404, "pool_not_found")
    assert_problem(put(http, admin, f"{plain}~bob", member_limit=-1), 422, "invalid_amount")
    assert_problem(put(http, admin, f"{plain}~bob", member_limit="5"), 422, "invalid_amount")
    assert_problem(put(http, admin, f"{plain}~b~c"), 422, "invalid_request")
    r = http.get(f"/v1/accounts/{plain}~bob", headers=bearer(admin))
    assert_problem(r, 404, "account_not_found")  # nothing was created


def test_a_batch_answers_each_members_charge_with_what_its_pool_paid(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    admin = api_keys["admin"]
    pool = create_account(http, admin)
    member = f"{pool}~bob"
    assert put(http, admin, member, tier="free", member_limit=15).status_code == 201
    charges = [{"account_id": member, "resource": "api_call", "units": 10}] * 2
    r = http.post("/v1/charges", json={"charges": charges}, headers=bearer(api_keys["service"]))
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert (first["status"], first["pool"]["paid"], first["pool"]["limit_remaining"]) == (
        200, 10, 5,
    )  # fmt: skip
    assert (second["status"], second["problem"]["code"]) == (402, "member_limit_reached")


def test_a_members_consume_is_the_same_on_the_fast_path(
    conn: Conn, gateway: GatewayServer, http: httpx.Client, api_keys: dict[str, str],
    through_asgi: list[int],
) -> None:  # fmt: skip
    admin, service = api_keys["admin"], api_keys["service"]
    pool = create_account(http, admin)
    member = f"{pool}~carol"
    assert put(http, admin, member, tier="free", member_limit=10).status_code == 201
    path = f"/v1/accounts/{member}/consume"
    fast, slow = both(conn, gateway, through_asgi,
                      *post(path, service, {"resource": "api_call", "units": 4}))  # fmt: skip
    assert fast.status == slow.status == 200
    assert (fast.json()["pool"]["limit_remaining"], slow.json()["pool"]["limit_remaining"]) == (
        6, 2,
    )  # fmt: skip
    fast, slow = both(conn, gateway, through_asgi,
                      *post(path, service, {"resource": "api_call", "units": 3}))  # fmt: skip
    same(fast, slow)
    assert (fast.status, fast.json()["code"]) == (402, "member_limit_reached")
    check = f"/v1/accounts/{member}/check"
    fast, slow = both(conn, gateway, through_asgi,
                      *post(check, service, {"resource": "api_call", "units": 2}))  # fmt: skip
    same(fast, slow)
    assert fast.json() == {"allowed": True, "cost": 2, "available": 2}


def test_the_hook_charges_a_member_to_its_pool_and_refuses_past_its_limit(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    admin = api_keys["admin"]
    pool = create_account(http, admin)
    member = f"{pool}~dave"
    assert put(http, admin, member, tier="free", member_limit=2).status_code == 201
    statuses = [http.get("/v1/authz", headers=hook(api_keys, member)).status_code for _ in range(3)]
    assert statuses == [200, 200, 402]
    assert account(http, admin, pool)["balance"] == 998


def test_the_pools_row_names_the_member_in_both_histories(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    admin, read = api_keys["admin"], api_keys["read"]
    pool = create_account(http, admin)
    member = f"{pool}~erin"
    assert put(http, admin, member, tier="free").status_code == 201
    charged = consume(http, api_keys["service"], member, 3).json()["transaction_id"]
    for acct in (pool, member):
        r = http.get(f"/v1/accounts/{acct}/transactions", headers=bearer(read))
        assert r.status_code == 200, r.text
        row = next(t for t in r.json()["transactions"] if t["id"] == charged)
        assert (row["account_id"], row["member_id"], row["amount"]) == (pool, member, -3)
