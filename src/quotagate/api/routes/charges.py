"""Check and consume: the hot path of services. One script call each, nothing else."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotagate.api.bodies import decode, read_body
from quotagate.api.endpoint import (
    REPLAYED,
    bearer,
    endpoint,
    idempotency_key,
    json_response,
    rate_limit_headers,
)
from quotagate.api.gateway import Gateway
from quotagate.api.schemas import ChargeOut, CheckOut, CheckRequest, ConsumeRequest


def routes(gw: Gateway) -> list[Route]:
    keys, engine, trigger = gw.keys, gw.engine, gw.flush_trigger

    @endpoint("check")
    async def check(request: Request) -> Response:
        keys.authorize(bearer(request), "service")
        body = decode(await read_body(request), CheckRequest)
        r = await engine.check(request.path_params["account_id"], body.resource, body.units)
        return json_response(CheckOut(r.allowed, r.cost, r.available))

    @endpoint("consume")
    async def consume(request: Request) -> Response:
        keys.authorize(bearer(request), "service")
        body = decode(await read_body(request), ConsumeRequest)
        account_id = request.path_params["account_id"]
        r = await engine.consume(
            account_id,
            body.resource,
            body.units,
            description=body.description,
            metadata=body.metadata,
            idempotency_key=idempotency_key(request),
        )
        trigger.note_write(account_id)
        headers = rate_limit_headers(r.rate_limit)
        if r.replayed:
            headers.update(REPLAYED)
        return json_response(ChargeOut(r.transaction_id, r.cost, r.remaining), headers=headers)

    return [
        Route("/v1/accounts/{account_id}/check", check, methods=["POST"]),
        Route("/v1/accounts/{account_id}/consume", consume, methods=["POST"]),
    ]
