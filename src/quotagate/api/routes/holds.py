"""Holds: capture the actual cost or release them, and settle the holds of reserve routes.
Setting credits aside (``POST /v1/accounts/{account_id}/holds``) is the front's
(:mod:`quotagate.api.service_endpoints`); the hook's reserve routes make theirs."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotagate import ids
from quotagate.api.bodies import decode, read_body
from quotagate.api.endpoint import (
    bearer,
    endpoint,
    idempotency_key,
    json_response,
    note_account,
    note_cost,
    replay_headers,
)
from quotagate.api.gateway import Gateway
from quotagate.api.schemas import (
    CaptureRequest,
    ChargeOut,
    ReleaseOut,
    ReleaseRequest,
    SettleOut,
    SettleRequest,
)
from quotagate.errors import ValidationError


def routes(gw: Gateway) -> list[Route]:
    keys, engine, trigger = gw.keys, gw.engine, gw.flush_trigger

    @endpoint("capture", charges=True)
    async def capture(request: Request) -> Response:
        keys.authorize(bearer(request), "service")
        body = decode(await read_body(request), CaptureRequest, empty_ok=True)
        account_id = request.path_params["account_id"]
        r = await engine.capture(
            account_id,
            request.path_params["hold_id"],
            body.amount,
            idempotency_key=idempotency_key(request),
        )
        trigger.note_write(account_id)
        note_cost(request, r.cost)
        answer = ChargeOut(r.transaction_id, r.cost, r.remaining)
        return json_response(answer, headers=replay_headers(r.replayed))

    @endpoint("release")
    async def release(request: Request) -> Response:
        keys.authorize(bearer(request), "service")
        decode(await read_body(request), ReleaseRequest, empty_ok=True)
        r = await engine.release(
            request.path_params["account_id"],
            request.path_params["hold_id"],
            idempotency_key=idempotency_key(request),
        )
        return json_response(
            ReleaseOut(r.released, r.available), headers=replay_headers(r.replayed)
        )

    @endpoint("settle", charges=True)
    async def settle(request: Request) -> Response:
        keys.authorize(bearer(request), "service", "settle")
        hold_id = request.path_params["hold_id"]
        account_id = ids.split_account_hold_id(hold_id)[0]
        note_account(request, account_id)
        body = decode(await read_body(request), SettleRequest)
        if (body.amount is None) == (body.units is None):
            raise ValidationError('a settle names either "amount" or "units"')
        r = await engine.settle(
            hold_id, amount=body.amount, units=body.units,
            idempotency_key=idempotency_key(request),
        )  # fmt: skip
        note_cost(request, r.charged)
        if r.charged:
            trigger.note_write(account_id)
        answer = SettleOut(
            r.transaction_id, r.charged, r.shortfall, r.released, r.remaining, r.balance
        )
        return json_response(answer, headers=replay_headers(r.replayed))

    return [
        Route("/v1/holds/{hold_id}/settle", settle, methods=["POST"]),
        Route("/v1/accounts/{account_id}/holds/{hold_id}/capture", capture, methods=["POST"]),
        Route("/v1/accounts/{account_id}/holds/{hold_id}/release", release, methods=["POST"]),
    ]
