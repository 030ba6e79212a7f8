"""The alternative a team would build without quotagate: a Postgres transaction per charge.

Each charge is one Postgres transaction over asyncpg: the guarded decrement
``UPDATE user_credits SET credits = credits - n WHERE account_id = $1 AND credits >= n`` (the
guide's race fixed the usual way) and the ledger INSERT, committed together. It is served by a
small Starlette app, run by the same uvicorn settings as the gateway, and answers the same
request as the authz hook (``GET /v1/authz`` with ``X-Account-Id``): 200 when charged, 402 when
not. Its tables live in a schema of their own in the benchmark's database.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SCHEMA = "guide"

DDL = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.user_credits (
    account_id text PRIMARY KEY,
    credits bigint NOT NULL DEFAULT 0,
    monthly_credits bigint NOT NULL DEFAULT 0,
    last_reset_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {SCHEMA}.credit_transactions (
    id uuid PRIMARY KEY,
    account_id text NOT NULL,
    amount bigint NOT NULL,
    type text NOT NULL,
    description text,
    metadata jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON {SCHEMA}.credit_transactions (account_id, created_at DESC);
"""
"""The guide's two tables, keyed by account, with the index its history page needs."""

SPEND = f"""
UPDATE {SCHEMA}.user_credits SET credits = credits - $2, updated_at = now()
WHERE account_id = $1 AND credits >= $2 RETURNING credits
"""
RECORD = f"""
INSERT INTO {SCHEMA}.credit_transactions (id, account_id, amount, type, description)
VALUES ($1, $2, $3, 'spend', $4)
"""

POOL_ENV = "QUOTAGATE_BENCH_PG_POOL"
"""Connections per worker process, to override DEFAULT_POOL_SIZE."""
DEFAULT_POOL_SIZE = 10
"""Connections per worker process when POOL_ENV is unset: a usual asyncpg pool size."""
URL_ENV = "QUOTAGATE_BENCH_PG_URL"


async def prepare(conn: asyncpg.Connection, accounts: list[str], credits: int) -> None:
    """Create the schema and one row per account holding ``credits``."""
    await conn.execute(DDL)
    await conn.copy_records_to_table(
        "user_credits",
        schema_name=SCHEMA,
        columns=["account_id", "credits"],
        records=((a, credits) for a in accounts),
    )
    await conn.execute(f"ANALYZE {SCHEMA}.user_credits")


def create_app() -> Starlette:
    """The app factory uvicorn serves (``--factory``); the database from QUOTAGATE_BENCH_PG_URL."""
    url = os.environ[URL_ENV]
    size = int(os.environ.get(POOL_ENV) or DEFAULT_POOL_SIZE)
    state: dict[str, asyncpg.Pool] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(url, min_size=size, max_size=size)
        gc.freeze()  # tuned as the gateway is: start-up objects out of the collector's sight
        yield
        await state["pool"].close()

    async def charge(request: Request) -> Response:
        account = request.headers.get("x-account-id")
        if not account:
            return Response(status_code=401)
        async with state["pool"].acquire() as conn, conn.transaction():
            remaining = await conn.fetchval(SPEND, account, 1)
            if remaining is None:
                return Response(status_code=402)
            await conn.execute(RECORD, uuid.uuid4(), account, -1, "api_call")
        return Response(status_code=200, headers={"X-Quota-Remaining": str(remaining)})

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    routes = [Route("/v1/authz", charge), Route("/healthz", healthz)]
    return Starlette(routes=routes, lifespan=lifespan)
