"""Credits: money in, written through to Postgres before the answer.

Grants and earnings create credits, so only admin keys make them. A service key may refund: a
refund returns (part of) a spend of the account it names, and all refunds of one spend
together return at most what it charged (:mod:`quotagate.ledger.refunds`).

A negative amount is an adjustment, which operators make with the CLI, never over HTTP: a body
asking for one is refused with a sentence that says so, not with the decoder's "Expected `int`
>= 1" or "Invalid enum value", which leave the caller to guess what would have worked.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotagate.api.bodies import decode, read_body
from quotagate.api.endpoint import bearer, endpoint, idempotency_key, json_response, replay_headers
from quotagate.api.gateway import Gateway
from quotagate.api.schemas import CreditOut, CreditRequest
from quotagate.engine.results import CreditResult
from quotagate.errors import Forbidden, InvalidAmount, ValidationError
from quotagate.ledger.refunds import refund

ADJUST_WITH_THE_CLI = "`quotagate grant --type adjust ACCOUNT_ID -- -5`"
"""How an operator makes an adjustment, the one credit that takes a negative amount."""


def routes(gw: Gateway) -> list[Route]:
    keys, engine = gw.keys, gw.engine

    async def add_credits(account_id: str, body: CreditRequest, request: Request) -> CreditResult:
        if body.type == "refund":
            return await refund(
                engine, gw.ledger.ledger, account_id, body.amount, body.refund_of,
                description=body.description, metadata=body.metadata,
                idempotency_key=idempotency_key(request),
            )  # fmt: skip
        return await engine.credit(
            account_id, body.amount, body.type, description=body.description,
            metadata=body.metadata, idempotency_key=idempotency_key(request),
            refund_of=body.refund_of,
        )  # fmt: skip

    @endpoint("credits")
    async def credits(request: Request) -> Response:
        key = keys.authorize(bearer(request), "admin", "service")
        body = credit_request(await read_body(request))
        if body.type != "refund" and not key.allows("admin"):
            raise Forbidden(f'a "{body.type}" needs an admin key (service keys may refund)')
        account_id = request.path_params["account_id"]
        r = await add_credits(account_id, body, request)
        durable = await gw.ledger.write_through(engine, account_id, [r.outbox_entry_id])
        gw.flush_trigger.note_write(account_id)
        answer = CreditOut(transaction_id=r.transaction_id, balance=r.balance, durable=durable)
        return json_response(answer, headers=replay_headers(r.replayed))

    return [Route("/v1/accounts/{account_id}/credits", credits, methods=["POST"])]


def credit_request(data: bytes) -> CreditRequest:
    """The body as a credit request; a refusal of ``amount`` or ``type`` that asks for an
    adjustment says where adjustments are made."""
    try:
        return decode(data, CreditRequest)
    except ValidationError as exc:
        if exc.extra.get("field") in ("amount", "type"):
            _refuse_adjustment(data)
        raise


def _refuse_adjustment(data: bytes) -> None:
    """Raise the refusal of a body that asks for an adjustment (``"type": "adjust"``, or a
    negative amount); return for any other body."""
    try:
        body = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return
    if not isinstance(body, dict):
        return
    if body.get("type") == "adjust":
        raise ValidationError(
            '"type": "adjust" is not taken over HTTP: adjustments, the only credits with a '
            f"negative amount, are made by operators with the CLI: {ADJUST_WITH_THE_CLI}",
            field="type",
        )
    amount = body.get("amount")
    if isinstance(amount, int) and not isinstance(amount, bool) and amount < 0:
        raise InvalidAmount(
            'a negative amount needs "type": "adjust", and adjustments are made by operators '
            f"with the CLI: {ADJUST_WITH_THE_CLI}; a grant, earn or refund takes 1 to 10^12",
            field="amount",
        )
