"""Accounts: create or update, read, history, and the resource table."""

from __future__ import annotations

import uuid

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotagate.api.bodies import decode, read_body
from quotagate.api.endpoint import (
    DEGRADED,
    bearer,
    endpoint,
    idempotency_key,
    json_response,
    replay_headers,
)
from quotagate.api.gateway import Gateway
from quotagate.api.schemas import (
    AccountUpsert,
    AccountWritten,
    ResourcesOut,
    TransactionsOut,
)
from quotagate.api.views import account_view, transaction_out
from quotagate.engine.validate import KEEP
from quotagate.errors import ValidationError

MAX_PAGE = 200
"""Largest page of history one request may ask for."""


def routes(gw: Gateway) -> list[Route]:
    keys, engine = gw.keys, gw.engine

    @endpoint("put_account")
    async def put_account(request: Request) -> Response:
        keys.authorize(bearer(request), "admin")
        body = decode(await read_body(request), AccountUpsert, empty_ok=True)
        account_id = request.path_params["account_id"]
        r = await engine.upsert_account(
            account_id,
            tier=body.tier,
            status=body.status,
            overdraft_limit=body.overdraft_limit,
            member_limit=KEEP if body.member_limit is msgspec.UNSET else body.member_limit,
            own_credits_first=body.own_credits_first,
            idempotency_key=idempotency_key(request),
        )
        # The account event and the opening grant (money in) go to Postgres now.
        durable = await gw.ledger.write_through(engine, account_id, list(r.outbox_entry_ids))
        gw.flush_trigger.note_write(account_id)
        answer = AccountWritten(
            account_id=r.account_id,
            created=r.created,
            tier=r.tier,
            status=r.status,
            overdraft_limit=r.overdraft_limit,
            balance=r.balance,
            reserved=r.balance + r.overdraft_limit - r.available,
            available=r.available,
            durable=durable,
        )
        return json_response(answer, 201 if r.created else 200, replay_headers(r.replayed))

    @endpoint("get_account")
    async def get_account(request: Request) -> Response:
        keys.authorize(bearer(request), "read", "service")
        view, degraded = await account_view(gw, request.path_params["account_id"])
        return json_response(view, headers=DEGRADED if degraded else None)

    @endpoint("transactions")
    async def transactions(request: Request) -> Response:
        keys.authorize(bearer(request), "read", "service")
        limit, before = _page_params(request)
        account_id = request.path_params["account_id"]
        await engine.get_account(account_id)  # 404 for an unknown account, not an empty page
        page = await gw.ledger.history(engine, account_id, limit, before)
        answer = TransactionsOut([transaction_out(t) for t in page.transactions], page.next)
        return json_response(answer)

    @endpoint("resources")
    async def resources(request: Request) -> Response:
        keys.authorize(bearer(request), "read", "service")
        return json_response(ResourcesOut(dict(gw.config.resources)))

    async def put_or_get_account(request: Request) -> Response:
        """One route for both methods, so that a 405 lists both in Allow."""
        return await (put_account if request.method == "PUT" else get_account)(request)

    return [
        Route("/v1/accounts/{account_id}", put_or_get_account, methods=["GET", "PUT"]),
        Route("/v1/accounts/{account_id}/transactions", transactions, methods=["GET"]),
        Route("/v1/resources", resources, methods=["GET"]),
    ]


def _page_params(request: Request) -> tuple[int, str | None]:
    q = request.query_params
    unknown = sorted(set(q.keys()) - {"limit", "before"})
    if unknown:
        raise ValidationError(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    raw = q.get("limit", "50")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not 1 <= int(raw) <= MAX_PAGE:
        raise ValidationError(f"limit must be an integer from 1 to {MAX_PAGE}", field="limit")
    before = q.get("before")
    if before is not None:
        try:
            before = str(uuid.UUID(before))
        except ValueError:
            raise ValidationError("before must be a transaction id", field="before") from None
    return int(raw), before
