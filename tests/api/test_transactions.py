"""GET /v1/accounts/{id}/transactions: newest first, pending marked, paged."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from tests.api.helpers import assert_problem, bearer, create_account
from tests.support.gateway import GatewayServer, new_account_id

from quotagate.config import load_config
from quotagate.engine import CreditEngine
from quotagate.ledger import flush_all
from quotagate.ledger.ledger import Ledger


def flush(gateway: GatewayServer, redis_url: str, database_url: str) -> None:
    async def run() -> None:
        engine = CreditEngine.from_url(
            redis_url, load_config(), prefix=gateway.app.state.gateway.settings.key_prefix
        )
        ledger = await Ledger.connect(database_url)
        try:
            await flush_all(engine, ledger)
        finally:
            await ledger.aclose()
            await engine.aclose()

    asyncio.run(run())


def test_history_pages_and_pending(
    http: httpx.Client,
    api_keys: dict[str, str],
    gateway: GatewayServer,
    redis_url: str,
    migrated_database_url: str,
) -> None:
    acct = create_account(http, api_keys["admin"])
    service = bearer(api_keys["service"])
    for i in range(5):
        r = http.post(
            f"/v1/accounts/{acct}/consume",
            json={"resource": "api_call", "description": f"c{i}", "metadata": {"i": i}},
            headers=service,
        )
        assert r.status_code == 200
    url = f"/v1/accounts/{acct}/transactions"
    page = http.get(url, headers=bearer(api_keys["read"])).json()
    assert page["next"] is None
    txns = page["transactions"]
    assert [t["description"] for t in txns[:5]] == ["c4", "c3", "c2", "c1", "c0"]
    assert [t["pending"] for t in txns] == [True] * 5 + [False]  # the grant was written through
    assert txns[0]["metadata"] == {"i": 4} and txns[0]["amount"] == -1
    assert set(txns[0]) >= {"id", "account_id", "amount", "type", "description", "metadata",
                            "created_at", "pending"}  # fmt: skip

    flush(gateway, redis_url, migrated_database_url)
    first = http.get(url, params={"limit": 2}, headers=service).json()
    assert [t["description"] for t in first["transactions"]] == ["c4", "c3"]
    assert not any(t["pending"] for t in first["transactions"])
    second = http.get(url, params={"limit": 2, "before": first["next"]}, headers=service).json()
    assert [t["description"] for t in second["transactions"]] == ["c2", "c1"]
    rest = http.get(url, params={"limit": 50, "before": second["next"]}, headers=service).json()
    assert [t["type"] for t in rest["transactions"]] == ["spend", "grant"]
    assert rest["next"] is None


def test_history_bad_params(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"])
    url = f"/v1/accounts/{acct}/transactions"
    read = bearer(api_keys["read"])
    for params in ({"limit": 0}, {"limit": 201}, {"limit": "x"}, {"limit": "1" * 5000},
                   {"before": "nope"}, {"colour": "red"}):  # fmt: skip
        assert_problem(http.get(url, params=params, headers=read), 422, "invalid_request")
    r = http.get(url, params={"before": str(uuid.uuid4())}, headers=read)
    assert_problem(r, 422, "invalid_request")  # not a transaction of this account


def test_history_unknown_account_is_404(http: httpx.Client, api_keys: dict[str, str]) -> None:
    r = http.get(f"/v1/accounts/{new_account_id()}/transactions", headers=bearer(api_keys["read"]))
    assert_problem(r, 404, "account_not_found")
