"""Batch charges through the router. Check and consume, the hot path of services, are the
front's (:mod:`quotagate.api.service_endpoints`), answered before the router.

A batch (``POST /v1/charges``) is decoded as a whole first (a malformed request writes
nothing), then item by item (a malformed item is a 422 of its own), and its valid items go
to the engine together (:meth:`~quotagate.engine.CreditEngine.consume_many`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotagate.api.bodies import decode, read_body
from quotagate.api.endpoint import (
    bearer,
    endpoint,
    idempotency_key,
    json_response,
)
from quotagate.api.gateway import Gateway
from quotagate.api.problems import problem_body
from quotagate.api.schemas import (
    BatchCharge,
    ChargeItemOut,
    ChargesOut,
    ChargesRequest,
)
from quotagate.api.views import pool_payment_out
from quotagate.config import Batch
from quotagate.engine import Charge, ChargeOutcome
from quotagate.errors import QuotagateError, ValidationError


def routes(gw: Gateway) -> list[Route]:
    keys, engine, trigger = gw.keys, gw.engine, gw.flush_trigger

    @endpoint("charges", charges=True)
    async def charges(request: Request) -> Response:
        keys.authorize(bearer(request), "service")
        items = await batch_items(request, gw.config.batch)
        outcomes = iter(await engine.consume_many([i for i in items if isinstance(i, Charge)]))
        results = []
        for item in items:
            outcome = next(outcomes) if isinstance(item, Charge) else item
            if isinstance(item, Charge) and not isinstance(outcome, QuotagateError):
                trigger.note_write(item.account_id)
            results.append(item_out(outcome))
        return json_response(ChargesOut(results))

    return [
        Route("/v1/charges", charges, methods=["POST"]),
    ]


async def batch_items(request: Request, limits: Batch) -> list[Charge | QuotagateError]:
    """The batch's charges, each decoded on its own (its 422 in its place when malformed).
    Raises for a malformed request: nothing of it is charged."""
    if idempotency_key(request) is not None:
        raise ValidationError(
            "a batch takes an idempotency key per charge (idempotency_key), "
            "not an Idempotency-Key header",
            field="Idempotency-Key",
        )
    body = decode(await read_body(request, limits.max_body_bytes), ChargesRequest)
    if len(body.charges) > limits.max_charges:
        raise ValidationError(
            f"a batch carries at most {limits.max_charges} charges, not {len(body.charges)}",
            field="charges",
        )
    return [_charge(bytes(raw)) for raw in body.charges]


def _charge(raw: bytes) -> Charge | QuotagateError:
    try:
        c = decode(raw, BatchCharge)
    except ValidationError as exc:
        return exc
    return Charge(c.account_id, c.resource, c.units, c.description, c.metadata, c.idempotency_key)


def item_out(outcome: ChargeOutcome) -> ChargeItemOut:
    """A charge's answer in the batch: what a single consume would have answered."""
    if isinstance(outcome, QuotagateError):
        return ChargeItemOut(outcome.http_status, problem=problem_body(outcome))
    return ChargeItemOut(
        200, outcome.transaction_id, outcome.cost, outcome.remaining, outcome.replayed,
        outcome.shadow, pool=pool_payment_out(outcome.pool),
    )  # fmt: skip
