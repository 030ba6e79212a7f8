"""The OpenAPI 3.1 document of the HTTP API, served at /openapi.json.

Bodies and answers come from the msgspec structs that decode and encode them
(:mod:`quotagate.api.schemas`), so the document cannot drift from what the code accepts.
"""

from __future__ import annotations

from typing import Any

import msgspec

from quotagate import __version__, ids
from quotagate.api import schemas as s
from quotagate.api.problems import PROBLEM_JSON
from quotagate.api.routes import alerts, usage
from quotagate.api.routes.hook import UNITS_PATTERN
from quotagate.config import Config

REF = "#/components/schemas/{name}"

_ACCOUNT_ID = {
    "name": "account_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": ids.ACCOUNT_ID_RE.pattern},
}
_HOLD_ID = {
    "name": "hold_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
_GRANT_ID = {
    "name": "grant_id",
    "in": "path",
    "required": True,
    "description": "An explicit grant's id (as its creation answered it).",
    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
}
_ACCOUNT_HOLD_ID = {
    "name": "hold_id",
    "in": "path",
    "required": True,
    "description": "The hold id the hook answered in X-Quota-Hold-Id: the account id in "
    "base64url, a dot, the hold's UUID.",
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{2,171}\.[0-9a-f-]{36}$"},
}
_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Same key and body within 24 h: the first answer again (with "
    "Idempotent-Replayed: true), nothing changed. Same key, other body: 409.",
    "schema": {"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$"},
}


def _header(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _ref(struct: type[msgspec.Struct]) -> dict[str, str]:
    return {"$ref": REF.format(name=struct.__name__)}


def _problems(*statuses: int) -> dict[str, Any]:
    texts = {
        400: "Bad request",
        401: "Missing or unknown key",
        403: "The key lacks the scope",
        404: "Unknown account, hold or grant",
        409: "Idempotency-Key reused with another request",
        402: "Insufficient credits (required, available)",
        413: "Body above the size cap",
        422: "Invalid request",
        429: "Rate limited (Retry-After)",
        503: "A backend is unavailable, or the account awaits recovery",
    }
    return {
        str(code): {
            "description": texts[code],
            "content": {PROBLEM_JSON: {"schema": _ref(s.Problem)}},
        }
        for code in statuses
    }


def _op(
    summary: str,
    scope: str,
    ok: tuple[int, type[msgspec.Struct] | None],
    *,
    body: type[msgspec.Struct] | None = None,
    body_required: bool = True,
    params: list[dict[str, Any]] | None = None,
    errors: tuple[int, ...] = (),
) -> dict[str, Any]:
    status, answer = ok
    op: dict[str, Any] = {"summary": summary, "parameters": params or []}
    if scope == "hook":
        op["security"] = [{"hookKey": []}]
    elif scope != "none":
        op["security"] = [{"bearer": []}]
        op["description"] = f"Scope: {scope}."
    if body is not None:
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    response: dict[str, Any] = {"description": "OK"}
    if answer is not None:
        response["content"] = {"application/json": {"schema": _ref(answer)}}
    auth = (401, 403) if scope != "none" else ()
    op["responses"] = {str(status): response, **_problems(*sorted({*auth, *errors}))}
    return op


def _hook_op() -> dict[str, Any]:
    params = [
        _header("X-Account-Id", "The account, named by the proxy after its own authentication."),
        _header("X-Quota-Resource", "The resource to charge (else the config's route table)."),
        _header(
            "X-Quota-Units",
            "Units of the resource (default 1).",
            {"type": "string", "pattern": UNITS_PATTERN},
        ),
        _header(
            "X-Quota-Mode",
            "charge or reserve: overrides the route's mode (reserve holds the estimate).",
            {"type": "string", "enum": ["charge", "reserve"]},
        ),
        _header("X-Request-Id", "The idempotency key of the charge."),
        _header("X-Original-Method", "nginx: the proxied request's method."),
        _header("X-Original-URI", "nginx: the proxied request's URI."),
        _header("X-Forwarded-Method", "Traefik: the proxied request's method."),
        _header("X-Forwarded-Uri", "Traefik: the proxied request's URI."),
    ]
    op = _op(
        "Reverse-proxy authz hook",
        "hook",
        (200, None),
        params=params,
        errors=(400, 402, 409, 422, 429, 503),
    )
    op["description"] = (
        "Allowed: 200 with X-Quota-Account, X-Quota-Cost, X-Quota-Remaining (and RateLimit-* "
        "for rate-limited tiers). A reserve route (or X-Quota-Mode: reserve) holds its "
        "estimate instead: 200 with X-Quota-Account, X-Quota-Hold-Id, X-Quota-Held and "
        "X-Quota-Remaining; the upstream settles it with POST /v1/holds/{hold_id}/settle. "
        "Denied for credits: authz.deny_status (402) with X-Quota-Reason; "
        "rate limited: authz.rate_limited_status (429) with Retry-After. No identity: 401; "
        "unknown or banned account: 403. A path spelled so that upstreams read it differently "
        "(dot segments, encoded slashes, double encoding, NUL): authz.invalid_path_status (400). "
        "Backend down: 503, or 200 with X-Quota-Degraded: 1."
    )
    return op


def _parameters() -> dict[str, list[dict[str, Any]]]:
    page = [
        _ACCOUNT_ID,
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
        },
        {
            "name": "before",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "format": "uuid"},
        },
    ]
    return {
        "acct": [_ACCOUNT_ID],
        "write": [_ACCOUNT_ID, _IDEMPOTENCY],
        "hold": [_ACCOUNT_ID, _HOLD_ID, _IDEMPOTENCY],
        "page": page,
    }


def _account_paths() -> dict[str, Any]:
    p = _parameters()
    acct, write, hold, page = p["acct"], p["write"], p["hold"], p["page"]
    paths: dict[str, Any] = {
        "/v1/accounts/{account_id}": {
            "put": _op(
                "Create or update an account",
                "admin",
                (200, s.AccountWritten),
                body=s.AccountUpsert,
                body_required=False,
                params=write,
                errors=(409, 413, 422, 503),
            ),
            "get": _op(
                "An account with its last 10 transactions",
                "read",
                (200, s.AccountOut),
                params=acct,
                errors=(404, 422, 503),
            ),
        },
        "/v1/accounts/{account_id}/credits": {
            "post": _op(
                "Add credits: grant, earn (admin) or refund a spend (service)",
                "admin (service for refund)",
                (200, s.CreditOut),
                body=s.CreditRequest,
                params=write,
                errors=(404, 409, 413, 422, 503),
            )
            | {
                "description": "Scope: admin (service for refund). A refund names the spend "
                "it returns (refund_of: a spend of this account, else 404 spend_not_found); "
                "all refunds of one spend together return at most what it charged (else 409 "
                "refund_exceeds_spend).",
            },
        },
        **_grant_paths(),
        "/v1/accounts/{account_id}/check": {
            "post": _op(
                "Would a charge be allowed now",
                "service",
                (200, s.CheckOut),
                body=s.CheckRequest,
                params=acct,
                errors=(404, 413, 422, 503),
            ),
        },
        "/v1/accounts/{account_id}/consume": {
            "post": _op(
                "Charge a resource",
                "service",
                (200, s.ChargeOut),
                body=s.ConsumeRequest,
                params=write,
                errors=(402, 404, 409, 413, 422, 429, 503),
            ),
        },
        "/v1/accounts/{account_id}/holds": {
            "post": _op(
                "Set credits aside",
                "service",
                (201, s.HoldOut),
                body=s.HoldRequest,
                params=write,
                errors=(402, 404, 409, 413, 422, 503),
            ),
        },
        "/v1/accounts/{account_id}/holds/{hold_id}/capture": {
            "post": _op(
                "Charge a hold (at most the held amount)",
                "service",
                (200, s.ChargeOut),
                body=s.CaptureRequest,
                body_required=False,
                params=hold,
                errors=(404, 409, 413, 422, 503),
            ),
        },
        "/v1/accounts/{account_id}/holds/{hold_id}/release": {
            "post": _op(
                "End a hold without charging",
                "service",
                (200, s.ReleaseOut),
                body=s.ReleaseRequest,
                body_required=False,
                params=hold,
                errors=(404, 409, 413, 422, 503),
            ),
        },
        "/v1/holds/{hold_id}/settle": {
            "post": _op(
                "Settle a reserved request with its actual cost",
                "service",
                (200, s.SettleOut),
                body=s.SettleRequest,
                params=[_ACCOUNT_HOLD_ID, _IDEMPOTENCY],
                errors=(404, 409, 413, 422, 503),
            )
            | {
                "description": "Scope: service. The hold of a reserve route (X-Quota-Hold-Id "
                "from the hook). Up to the held amount the actual cost is charged and the rest "
                "released; above it, up to the route's max_overrun more while the credits "
                "allow, the rest being the shortfall. 0 releases. 404 hold_not_found; 409 "
                "hold_settled (settled already) or hold_expired (its deadline passed: its "
                "on_expiry policy ended it); 422 units_not_priced (units for a hold "
                "estimated in credits).",
            },
        },
        "/v1/accounts/{account_id}/transactions": {
            "get": _op(
                "History, newest first",
                "read",
                (200, s.TransactionsOut),
                params=page,
                errors=(404, 422, 503),
            ),
        },
        "/v1/resources": {"get": _op("Resource costs", "read", (200, s.ResourcesOut))},
    }
    paths["/v1/accounts/{account_id}"]["put"]["responses"]["201"] = {
        "description": "Created",
        "content": {"application/json": {"schema": _ref(s.AccountWritten)}},
    }
    return paths


def _grant_paths() -> dict[str, Any]:
    p = _parameters()
    make = _op(
        "Give an account an explicit grant", "admin", (201, s.GrantMadeOut), body=s.GrantRequest,
        params=p["write"], errors=(404, 409, 413, 422, 503),
    )  # fmt: skip
    make["description"] = (
        "Scope: admin. Credits from a source, spent by priority (0..100, lower first), then "
        "soonest expiry, then age; what is left at expires_at (or expires_in_seconds from now; "
        "neither: never) expires. 201 with the grant's id; a replay of its Idempotency-Key "
        "answers 200 with replayed: true. 409 too_many_grants when the account holds the most "
        "explicit grants it may. Written through to PostgreSQL before the answer (durable)."
    )
    make["responses"]["200"] = {
        "description": "A replay (Idempotency-Key): the first answer again",
        "content": {"application/json": {"schema": _ref(s.GrantMadeOut)}},
    }
    listed = _op(
        "An account's grants in spend order, and its next expiry", "read", (200, s.GrantsOut),
        params=p["acct"], errors=(404, 422, 503),
    )  # fmt: skip
    void = _op(
        "Void an explicit grant: take back what is left of it", "admin", (200, s.VoidOut),
        body=s.VoidGrantRequest, body_required=False,
        params=[_ACCOUNT_ID, _GRANT_ID, _IDEMPOTENCY], errors=(404, 409, 413, 422, 503),
    )  # fmt: skip
    void["description"] = (
        "Scope: admin. An adjust transaction takes back what is left (voided); the available "
        "credits may go below zero. 404 grant_not_found for an id the account holds no credits "
        "under (spent, expired, voided, or a standing grant: monthly, purchased)."
    )
    return {
        "/v1/accounts/{account_id}/grants": {"post": make, "get": listed},
        "/v1/accounts/{account_id}/grants/{grant_id}/void": {"post": void},
    }


def _batch_paths(config: Config) -> dict[str, Any]:
    op = _op(
        "Charge many resources, for any accounts",
        "service",
        (200, s.ChargesOut),
        body=s.ChargesRequest,
        errors=(413, 422, 503),
    )
    op["description"] = (
        f"Scope: service. Up to {config.batch.max_charges} charges (batch.max_charges), each "
        "a BatchCharge with its own account, resource, units and optional idempotency_key. "
        "The answer carries one result per charge, in order: its status and what a single "
        "consume would have answered (the charge, or its problem document, 402, 404, 409, "
        "422, 429, 503...). A malformed request (not a JSON object, no charges array, too many "
        "charges, an Idempotency-Key header) is a 422 and charges nothing; a malformed charge "
        "is a 422 result of its own. Charges of one account run in their order; not "
        "all-or-nothing. An item's idempotency_key is the Idempotency-Key of a consume of its "
        "account: either replays the other."
    )
    return {"/v1/charges": {"post": op}}


def _limit_batches(components: dict[str, Any], config: Config) -> None:
    """The batch size is the config's: the document says it, as the server enforces it."""
    components["ChargesRequest"]["properties"]["charges"]["maxItems"] = config.batch.max_charges


def _one_expiry(components: dict[str, Any]) -> None:
    """A grant names at most one of its two expiries, which msgspec's schema cannot say."""
    components["GrantRequest"]["not"] = {"required": ["expires_at", "expires_in_seconds"]}


def _hook_paths() -> dict[str, Any]:
    hook = _hook_op()
    any_method = {m: hook for m in ("get", "head", "post", "put", "patch", "delete", "options")}
    return {
        "/v1/me": {
            "get": _op(
                "The account the proxy names in X-Account-Id",
                "hook",
                (200, s.AccountOut),
                params=[_header("X-Account-Id", "The account.")],
                errors=(404, 422, 503),
            ),
        },
        "/v1/authz": any_method,
        "/v1/authz/{path}": {
            m: {
                **hook,
                "parameters": [
                    {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
                    *hook["parameters"],
                ],
            }
            for m in any_method
        },
    }


def _ops_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/healthz": {"get": _op("The process is up", "none", (200, s.HealthOut))},
        "/readyz": {
            "get": _op(
                "Redis and Postgres answer (503 otherwise, with which)", "none", (200, s.ReadyOut)
            )
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }
    paths["/readyz"]["get"]["responses"]["503"] = {
        "description": "Not ready",
        "content": {"application/json": {"schema": _ref(s.ReadyOut)}},
    }
    return paths


def _name_the_configured(components: dict[str, Any], config: Config) -> None:
    """Tiers and resources are the config's: the document lists them, so that it accepts
    exactly the names the server does."""
    names = {"tier": sorted(config.tiers), "resource": sorted(config.resources)}
    for schema in components.values():
        for field, schema_of_field in schema.get("properties", {}).items():
            if field in names:
                named = {"enum": names[field]}
                optional = any(o.get("type") == "null" for o in schema_of_field.get("anyOf", []))
                schema["properties"][field] = (
                    {"anyOf": [named, {"type": "null"}]} if optional else named
                )


def openapi_document(config: Config) -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        (*s.REQUESTS, *s.ANSWERS, *usage.ANSWERS, *alerts.REQUESTS, *alerts.ANSWERS),
        ref_template=REF,
    )
    _name_the_configured(components, config)
    _limit_batches(components, config)
    _one_expiry(components)
    paths = {
        **_account_paths(),
        **_batch_paths(config),
        **usage.openapi_paths(_op, _ACCOUNT_ID),
        **alerts.openapi_paths(_op),
        **_hook_paths(),
        **_ops_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "quotagate",
            "version": __version__,
            "description": "Credits and quotas: charges in Redis, a durable ledger in Postgres. "
            f"Resources: {', '.join(sorted(config.resources))}.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "hookKey": {"type": "apiKey", "in": "header", "name": "X-Quotagate-Key"},
            },
        },
    }
