"""Credits: money in, written through to Postgres before the answer.

Grants and earnings create credits, so only admin keys make them. A service key may refund: a
refund returns (part of) a spend of the account it names, and all refunds of one spend
together return at most what it charged (:mod:`quotagate.ledger.refunds`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotagate.api.bodies import decode, read_body
from quotagate.api.endpoint import bearer, endpoint, idempotency_key, json_response, replay_headers
from quotagate.api.errors import Forbidden
from quotagate.api.gateway import Gateway
from quotagate.api.schemas import CreditOut, CreditRequest
from quotagate.engine.results import CreditResult
from quotagate.ledger.refunds import refund


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
        body = decode(await read_body(request), CreditRequest)
        if body.type != "refund" and not key.allows("admin"):
            raise Forbidden(f'a "{body.type}" needs an admin key (service keys may refund)')
        account_id = request.path_params["account_id"]
        r = await add_credits(account_id, body, request)
        durable = await gw.ledger.write_through(engine, account_id, [r.outbox_entry_id])
        gw.flush_trigger.note_write(account_id)
        answer = CreditOut(transaction_id=r.transaction_id, balance=r.balance, durable=durable)
        return json_response(answer, headers=replay_headers(r.replayed))

    return [Route("/v1/accounts/{account_id}/credits", credits, methods=["POST"])]
