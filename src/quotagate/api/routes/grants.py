"""Explicit credit grants: make one, list an account's grants, void one (``docs/grants.md``).

A grant creates credits, so only admin keys make or void one, as only they grant credits;
read and service keys may list them. A new grant is money in: it is written through to
PostgreSQL before the answer, as a credit is.

Bad terms are refused with a sentence naming the field and what it takes, before anything is
written: the decoder's "Invalid enum value" or "Expected `int` <= 100" would leave the caller
to guess which sources or priorities exist.
"""

from __future__ import annotations

import time
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotagate.api.bodies import decode, read_body
from quotagate.api.endpoint import bearer, endpoint, idempotency_key, json_response, replay_headers
from quotagate.api.gateway import Gateway
from quotagate.api.schemas import GrantMadeOut, GrantRequest, VoidGrantRequest, VoidOut
from quotagate.api.views import grants_out
from quotagate.engine.results import GRANT_SOURCES
from quotagate.errors import ValidationError

_CLEARER = {
    "source": f"source must be one of {', '.join(GRANT_SOURCES)}",
    "priority": "priority must be an integer from 0 to 100 (lower is spent first)",
    "expires_at": 'expires_at must be an RFC 3339 time with a zone, such as "2030-01-31T00:00:00Z"',
    "expires_in_seconds": "expires_in_seconds must be a whole number of seconds, at least 1",
}
"""What each grant term takes, said instead of the decoder's message when it refuses one."""


def routes(gw: Gateway) -> list[Route]:
    keys, engine = gw.keys, gw.engine

    @endpoint("grant")
    async def make_grant(request: Request) -> Response:
        keys.authorize(bearer(request), "admin")
        body = grant_request(await read_body(request))
        account_id = request.path_params["account_id"]
        r = await engine.grant(
            account_id, body.amount, source=body.source, priority=body.priority,
            expires_at=body.expires_at, expires_in=lifetime_of(body),
            description=body.description, metadata=body.metadata,
            idempotency_key=idempotency_key(request),
        )  # fmt: skip
        durable = await gw.ledger.write_through(engine, account_id, [r.outbox_entry_id])
        gw.flush_trigger.note_write(account_id)
        answer = GrantMadeOut(
            r.grant_id, r.transaction_id, r.balance, r.available, r.replayed, durable,
            r.expires_at,
        )  # fmt: skip
        return json_response(answer, 200 if r.replayed else 201, replay_headers(r.replayed))

    @endpoint("grants")
    async def list_grants(request: Request) -> Response:
        keys.authorize(bearer(request), "read", "service")
        account = await engine.get_account(request.path_params["account_id"])
        return json_response(grants_out(account))

    @endpoint("void_grant")
    async def void_grant(request: Request) -> Response:
        keys.authorize(bearer(request), "admin")
        body = decode(await read_body(request), VoidGrantRequest, empty_ok=True)
        account_id = request.path_params["account_id"]
        r = await engine.void_grant(
            account_id, request.path_params["grant_id"], description=body.description,
            idempotency_key=idempotency_key(request),
        )  # fmt: skip
        durable = await gw.ledger.write_through(engine, account_id, [r.outbox_entry_id])
        gw.flush_trigger.note_write(account_id)
        answer = VoidOut(r.transaction_id, r.voided, r.balance, r.available, r.replayed, durable)
        return json_response(answer, headers=replay_headers(r.replayed))

    async def make_or_list(request: Request) -> Response:
        """One route for both methods, so that a 405 lists both in Allow."""
        return await (make_grant if request.method == "POST" else list_grants)(request)

    return [
        Route("/v1/accounts/{account_id}/grants", make_or_list, methods=["GET", "POST"]),
        Route("/v1/accounts/{account_id}/grants/{grant_id}/void", void_grant, methods=["POST"]),
    ]


def grant_request(data: bytes) -> GrantRequest:
    """The body as a grant request, its refusals worded by what each term takes."""
    try:
        body = decode(data, GrantRequest)
    except ValidationError as exc:
        field = exc.extra.get("field")
        if field in _CLEARER:
            raise ValidationError(_CLEARER[field], field=field) from None
        raise
    if body.expires_at is not None and body.expires_in_seconds is not None:
        raise ValidationError(
            "give either expires_at or expires_in_seconds, not both", field="expires_at"
        )
    if body.expires_at is not None and body.expires_at.timestamp() <= time.time():
        raise ValidationError(
            "expires_at is in the past: a grant must expire later", field="expires_at"
        )
    return body


def lifetime_of(body: GrantRequest) -> timedelta | None:
    """A relative expiry: counted from when Redis makes the grant, so that a retry under the
    same Idempotency-Key asks for the same grant and is replayed."""
    if body.expires_in_seconds is None:
        return None
    return timedelta(seconds=body.expires_in_seconds)
