"""Holds: set credits aside, then capture the actual cost or release them."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotagate.api.bodies import decode, read_body
from quotagate.api.endpoint import bearer, endpoint, idempotency_key, json_response, replay_headers
from quotagate.api.gateway import Gateway
from quotagate.api.schemas import (
    CaptureRequest,
    ChargeOut,
    HoldOut,
    HoldRequest,
    ReleaseOut,
    ReleaseRequest,
)
from quotagate.errors import ValidationError


def routes(gw: Gateway) -> list[Route]:
    keys, engine, trigger = gw.keys, gw.engine, gw.flush_trigger

    @endpoint("hold")
    async def hold(request: Request) -> Response:
        keys.authorize(bearer(request), "service")
        body = decode(await read_body(request), HoldRequest)
        if (body.resource is None) == (body.amount is None):
            raise ValidationError('a hold names either "resource" (and "units") or "amount"')
        if body.units is not None and body.resource is None:
            raise ValidationError('"units" goes with "resource"', field="units")
        account_id = request.path_params["account_id"]
        r = await engine.hold(
            account_id,
            resource=body.resource,
            units=body.units or 1,
            amount=body.amount,
            ttl_seconds=body.ttl_seconds,
            idempotency_key=idempotency_key(request),
        )
        trigger.note_write(account_id)
        answer = HoldOut(r.hold_id, r.amount, r.expires_at, r.available)
        return json_response(answer, 201, replay_headers(r.replayed))

    @endpoint("capture")
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

    return [
        Route("/v1/accounts/{account_id}/holds", hold, methods=["POST"]),
        Route("/v1/accounts/{account_id}/holds/{hold_id}/capture", capture, methods=["POST"]),
        Route("/v1/accounts/{account_id}/holds/{hold_id}/release", release, methods=["POST"]),
    ]
