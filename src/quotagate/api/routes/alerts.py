"""Alerts and webhook endpoints, for admins: GET /v1/alerts; POST, GET /v1/webhooks;
DELETE /v1/webhooks/{id}; GET /v1/webhooks/deliveries; POST .../{id}/redeliver."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotagate import ids
from quotagate.alerts import store, webhooks
from quotagate.alerts.webhooks import Delivery, Webhook
from quotagate.api.bodies import decode, read_body
from quotagate.api.endpoint import bearer, endpoint, json_response
from quotagate.api.gateway import Gateway
from quotagate.api.routes.usage import query_params, require_ledger
from quotagate.errors import ValidationError, WebhookNotFound

MAX_PAGE = 200
STATUSES = ("pending", "delivered", "dead")
Event = Annotated[str, Meta(min_length=1, max_length=64)]


class AlertOut(Struct):
    id: int
    kind: str
    account_id: str
    rule: str
    details: dict[str, Any]
    created_at: datetime


class AlertsOut(Struct):
    alerts: list[AlertOut]
    next: int | None
    """Pass as ``before`` for the next page; null on the last."""


class WebhookRequest(Struct, forbid_unknown_fields=True):
    url: Annotated[str, Meta(min_length=1, max_length=webhooks.MAX_URL_CHARS)]
    events: Annotated[list[Event], Meta(min_length=1, max_length=16)]
    """Alert kinds to send (balance_below, credits_expiring, unusual_consumption), or *."""
    secret: Annotated[str, Meta(max_length=200)] | None = None
    """``whsec_`` and a base64 key; made here when left out."""
    description: Annotated[str, Meta(max_length=500)] | None = None


class WebhookCreated(Struct):
    id: str
    url: str
    events: list[str]
    description: str | None
    created_at: datetime
    secret: str
    """Shown this once: the key that signs every delivery to this endpoint."""


class WebhooksOut(Struct):
    webhooks: list[Webhook]


class DeliveriesOut(Struct):
    deliveries: list[Delivery]


class RedeliveredOut(Struct):
    redelivered: int


class DeletedOut(Struct):
    deleted: bool


REQUESTS: tuple[type[Struct], ...] = (WebhookRequest,)
ANSWERS: tuple[type[Struct], ...] = (
    AlertOut, AlertsOut, WebhookCreated, WebhooksOut, DeliveriesOut,
    RedeliveredOut, DeletedOut,
)  # fmt: skip


def _int(raw: str | None, name: str, default: int, top: int) -> int:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19) or not 1 <= int(raw) <= top:
        raise ValidationError(f"{name} must be an integer from 1 to {top}", field=name)
    return int(raw)


def routes(gw: Gateway) -> list[Route]:
    keys = gw.keys

    @endpoint("alerts")
    async def alerts(request: Request) -> Response:
        keys.authorize(bearer(request), "admin")
        q = query_params(request, frozenset({"limit", "before", "account_id", "kind"}))
        limit = _int(q.get("limit"), "limit", 50, MAX_PAGE)
        before = _int(q.get("before"), "before", 2**62, 2**62) if "before" in q else None
        account_id = q.get("account_id")
        if account_id is not None:
            ids.check_account_id(account_id)
        kind = q.get("kind")
        if kind is not None and kind not in store.KINDS:
            raise ValidationError(f"kind must be one of {', '.join(store.KINDS)}", field="kind")
        found = await store.list_alerts(
            require_ledger(gw), limit=limit + 1, before=before, account_id=account_id, kind=kind
        )
        page = [AlertOut(**msgspec.structs.asdict(_struct(a))) for a in found[:limit]]
        return json_response(AlertsOut(page, page[-1].id if len(found) > limit else None))

    @endpoint("webhooks")
    async def webhooks_route(request: Request) -> Response:
        keys.authorize(bearer(request), "admin")
        ledger = require_ledger(gw)
        if request.method == "GET":
            query_params(request, frozenset())
            found = await webhooks.list_endpoints(ledger)
            return json_response(WebhooksOut(found))
        body = decode(await read_body(request), WebhookRequest)
        made, secret = await webhooks.create_endpoint(
            ledger, body.url, body.events, secret=body.secret, description=body.description
        )
        return json_response(WebhookCreated(**_fields(made), secret=secret), 201)

    @endpoint("delete_webhook")
    async def delete_webhook(request: Request) -> Response:
        keys.authorize(bearer(request), "admin")
        await webhooks.delete_endpoint(require_ledger(gw), request.path_params["webhook_id"])
        return json_response(DeletedOut(True))

    @endpoint("webhook_deliveries")
    async def deliveries(request: Request) -> Response:
        keys.authorize(bearer(request), "admin")
        q = query_params(request, frozenset({"status", "limit"}))
        status = q.get("status")
        if status is not None and status not in STATUSES:
            raise ValidationError(f"status must be one of {', '.join(STATUSES)}", field="status")
        limit = _int(q.get("limit"), "limit", 50, MAX_PAGE)
        found = await webhooks.list_deliveries(require_ledger(gw), status=status, limit=limit)
        return json_response(DeliveriesOut(found))

    @endpoint("redeliver")
    async def redeliver(request: Request) -> Response:
        keys.authorize(bearer(request), "admin")
        delivery_id = request.path_params["delivery_id"]
        if not await webhooks.redeliver(require_ledger(gw), [delivery_id]):
            raise WebhookNotFound(f"no webhook delivery {delivery_id}")
        return json_response(RedeliveredOut(1))

    return [
        Route("/v1/alerts", alerts, methods=["GET"]),
        Route("/v1/webhooks", webhooks_route, methods=["GET", "POST"]),
        Route("/v1/webhooks/deliveries", deliveries, methods=["GET"]),
        Route("/v1/webhooks/deliveries/{delivery_id}/redeliver", redeliver, methods=["POST"]),
        Route("/v1/webhooks/{webhook_id}", delete_webhook, methods=["DELETE"]),
    ]


def _struct(alert: store.Alert) -> AlertOut:
    return AlertOut(
        alert.id, alert.kind, alert.account_id, alert.rule, alert.details, alert.created_at
    )


def _fields(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__slots__}


def openapi_paths(op: Any) -> dict[str, Any]:
    """The paths, built with the document's own operation builder ``op``."""

    def query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema}

    page = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50}
    alerts = op(
        "Alerts, newest first", "admin", (200, AlertsOut),
        params=[query("limit", page), query("before", {"type": "integer"}),
                query("account_id", {"type": "string"}),
                query("kind", {"enum": list(store.KINDS)})],
        errors=(422, 503),
    )  # fmt: skip
    path_id = {"name": "webhook_id", "in": "path", "required": True, "schema": {"type": "string"}}
    delivery_id = {**path_id, "name": "delivery_id"}
    return {
        "/v1/alerts": {"get": alerts},
        "/v1/webhooks": {
            "get": op("Webhook endpoints", "admin", (200, WebhooksOut), errors=(422, 503)),
            "post": op(
                "Add a webhook endpoint (its secret is in this answer only)", "admin",
                (201, WebhookCreated), body=WebhookRequest, errors=(413, 422, 503),
            ),
        },
        "/v1/webhooks/{webhook_id}": {
            "delete": op("Remove a webhook endpoint and its deliveries", "admin",
                         (200, DeletedOut), params=[path_id], errors=(404, 503)),
        },
        "/v1/webhooks/deliveries": {
            "get": op("Webhook deliveries, newest first", "admin", (200, DeliveriesOut),
                      params=[query("status", {"enum": list(STATUSES)}), query("limit", page)],
                      errors=(422, 503)),
        },
        "/v1/webhooks/deliveries/{delivery_id}/redeliver": {
            "post": op("Send a delivery again from its first try", "admin",
                       (200, RedeliveredOut), params=[delivery_id], errors=(404, 503)),
        },
    }  # fmt: skip
