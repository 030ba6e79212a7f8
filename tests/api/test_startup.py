"""How the gateway starts: Postgres down (starts, charges, durable false), schema behind
(refuses), a Redis that lost its data while the ledger has accounts (waits for recovery)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from tests.api.helpers import assert_problem, bearer, create_account
from tests.conftest import ADMIN_DATABASE_URL
from tests.support.gateway import gateway_settings, new_account_id, running_gateway
from tests.support.servers import free_port

from quotagate.api.app import create_app
from quotagate.errors import ConfigError
from quotagate.settings import Secret


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"qg_empty_{uuid.uuid4().hex[:10]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(ADMIN_DATABASE_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield ADMIN_DATABASE_URL.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_refuses_to_start_on_a_schema_behind(
    redis_url: str, key_prefix: str, empty_database: str
) -> None:
    app = create_app(gateway_settings(redis_url, empty_database, key_prefix))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(ConfigError, match="quotagate migrate"):
        asyncio.run(start())


def test_starts_and_charges_with_postgres_down(
    redis_url: str, migrated_database_url: str, key_prefix: str, api_keys: dict[str, str]
) -> None:
    settings = gateway_settings(redis_url, migrated_database_url, key_prefix)
    with running_gateway(settings) as gw, httpx.Client(base_url=gw.url) as http:
        acct = create_account(http, api_keys["admin"])  # also leaves the keys' copy in Redis
    down = gateway_settings(
        redis_url, f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere", key_prefix
    )
    with running_gateway(down, fresh=False) as gw, httpx.Client(base_url=gw.url) as http:
        admin, service = bearer(api_keys["admin"]), bearer(api_keys["service"])
        r = http.post(
            f"/v1/accounts/{acct}/consume", json={"resource": "api_call"}, headers=service
        )
        assert r.status_code == 200 and r.json()["remaining"] == 999
        r = http.post(
            f"/v1/accounts/{acct}/credits", json={"amount": 10, "type": "grant"}, headers=admin
        )
        assert r.status_code == 200
        assert (r.json()["balance"], r.json()["durable"]) == (1009, False)
        r = http.put(f"/v1/accounts/{new_account_id()}", json={}, headers=admin)
        assert r.status_code == 201 and r.json()["durable"] is False
        # The balance is right; the history needs the ledger.
        r = http.get(f"/v1/accounts/{acct}", headers=admin)
        assert r.status_code == 200 and r.headers["x-quota-degraded"] == "1"
        assert r.json()["balance"] == 1009
        assert_problem(
            http.get(f"/v1/accounts/{acct}/transactions", headers=admin), 503, "backend_unavailable"
        )
        ready = http.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert (body["ready"], body["redis"], body["postgres"]) == (False, "ok", "down")
        assert body["outbox_lag"]["total"] >= 3
    # Back on the real database: the grant that was not durable is still in the outbox, and a
    # history read shows it pending (the flush will copy it).
    with running_gateway(settings, fresh=False) as gw, httpx.Client(base_url=gw.url) as http:
        txns = http.get(
            f"/v1/accounts/{acct}/transactions", headers=bearer(api_keys["admin"])
        ).json()
        assert [(t["type"], t["amount"], t["pending"]) for t in txns["transactions"][:2]] == [
            ("grant", 10, True),
            ("spend", -1, True),
        ]


def test_lost_redis_waits_for_recovery(
    redis_url: str, migrated_database_url: str, key_prefix: str, api_keys: dict[str, str]
) -> None:
    # The session's ledger holds accounts (other tests made them); this prefix is empty.
    settings = gateway_settings(redis_url, migrated_database_url, key_prefix)
    with running_gateway(settings) as gw, httpx.Client(base_url=gw.url) as http:
        create_account(http, api_keys["admin"])
    fresh = gateway_settings(redis_url, migrated_database_url, key_prefix + ":x")
    with running_gateway(fresh, fresh=False) as gw, httpx.Client(base_url=gw.url) as http:
        r = http.put(f"/v1/accounts/{new_account_id()}", json={}, headers=bearer(api_keys["admin"]))
        assert_problem(r, 503, "account_not_loaded")
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"] == "needs_recovery"


def test_key_prefix_secret_is_not_printed() -> None:
    assert "hunter2" not in repr(Secret("redis://u:hunter2@h/0"))
