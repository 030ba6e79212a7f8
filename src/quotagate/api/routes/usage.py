"""Usage over time: one account's (read) and every account's (admin), from the ledger's hourly
rollup with the outbox's pending entries added (see :mod:`quotagate.ledger.usage`). A pool's
usage may be grouped by member (``group_by=member``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from msgspec import Struct
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotagate.api.endpoint import bearer, endpoint, json_response
from quotagate.api.gateway import Gateway
from quotagate.errors import BackendUnavailable, ValidationError
from quotagate.ledger import Ledger, members
from quotagate.ledger import usage as u

WINDOW_PARAMS = frozenset({"from", "to", "window"})
ACCOUNT_PARAMS = WINDOW_PARAMS | {"group_by"}
ALL_PARAMS = WINDOW_PARAMS | {"group_by", "limit"}


class UsageRowOut(Struct):
    window_start: datetime
    account_id: str | None
    """The account (one account's usage, or group_by=account), else null."""
    resource: str | None
    """The resource charged; null for transactions without one, and for group_by=account or
    member."""
    member_id: str | None
    """group_by=member: the member the pool paid for; null for the pool's own charges (and in
    every other grouping)."""
    spent: int
    granted: int
    earned: int
    refunded: int
    expired: int
    adjusted: int
    """Signed: the sum of the adjustments."""
    units: int
    """Units of the spends."""
    transactions: int
    pending: int
    """Of the transactions, those still in the outbox (not yet in PostgreSQL)."""


class UsageOut(Struct, rename={"from_": "from"}):
    from_: datetime
    """The start of the first window (the query's ``from``, moved back to it)."""
    to: datetime
    """The end of the last window, excluded."""
    window: u.Window
    group_by: u.Grouping
    rows: list[UsageRowOut]
    pending: int
    """Outbox transactions counted in the rows."""
    pending_complete: bool
    """False when an outbox held more entries than the read looks at."""


ANSWERS: tuple[type[Struct], ...] = (UsageRowOut, UsageOut)


def usage_out(report: u.UsageReport) -> UsageOut:
    rows = [
        UsageRowOut(**{f: getattr(r, f) for f in UsageRowOut.__struct_fields__})
        for r in report.rows
    ]
    return UsageOut(
        window=report.range.window,
        group_by=report.group_by,
        rows=rows,
        pending=report.pending,
        pending_complete=report.pending_complete,
        from_=report.range.start,
        to=report.range.end,
    )


def routes(gw: Gateway) -> list[Route]:
    keys, engine = gw.keys, gw.engine

    @endpoint("account_usage")
    async def account_usage(request: Request) -> Response:
        keys.authorize(bearer(request), "read", "service")
        query = query_params(request, ACCOUNT_PARAMS)
        account_id = request.path_params["account_id"]
        members.check_account_or_member_id(account_id)
        span = u.UsageRange.parse(query.get("from"), query.get("to"), query.get("window"))
        group_by = _account_group_by(query.get("group_by"), account_id)
        await engine.get_account(account_id)  # 404 for an unknown account, not empty usage
        report = await u.account_usage(
            engine, require_ledger(gw), account_id, span, group_by=group_by
        )
        return json_response(usage_out(report))

    @endpoint("all_usage")
    async def all_usage(request: Request) -> Response:
        keys.authorize(bearer(request), "admin")
        query = query_params(request, ALL_PARAMS)
        span = u.UsageRange.parse(query.get("from"), query.get("to"), query.get("window"))
        group_by = query.get("group_by", "resource")
        if group_by not in u.GROUPS:
            raise ValidationError("group_by must be resource or account", field="group_by")
        limit = _limit(query.get("limit"))
        report = await u.all_usage(engine, require_ledger(gw), span, group_by=group_by, limit=limit)
        return json_response(usage_out(report))

    return [
        Route("/v1/accounts/{account_id}/usage", account_usage, methods=["GET"]),
        Route("/v1/usage", all_usage, methods=["GET"]),
    ]


def require_ledger(gw: Gateway) -> Ledger:
    if gw.ledger.ledger is None:
        raise BackendUnavailable("the ledger (Postgres) is unavailable")
    return gw.ledger.ledger


def query_params(request: Request, known: frozenset[str]) -> dict[str, str]:
    q = request.query_params
    unknown = sorted(set(q.keys()) - known)
    if unknown:
        raise ValidationError(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    return dict(q.items())


def _account_group_by(raw: str | None, account_id: str) -> u.AccountGroupBy:
    """One account's usage is by resource; a pool's may be grouped by member instead."""
    if raw is None:
        return "resource"
    if raw != "member":
        raise ValidationError(
            "group_by must be member (an account's usage is by resource otherwise)",
            field="group_by",
        )
    if members.pool_of(account_id) is not None:
        raise ValidationError("group_by=member is for a pool's usage", field="group_by")
    return "member"


def _limit(raw: str | None) -> int:
    if raw is None:
        return u.DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not 1 <= int(raw) <= u.MAX_LIMIT:
        raise ValidationError(f"limit must be an integer from 1 to {u.MAX_LIMIT}", field="limit")
    return int(raw)


def _window_params() -> list[dict[str, Any]]:
    def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {
            "name": name, "in": "query", "required": False, "schema": schema,
            "description": description,
        }  # fmt: skip

    instant = {"type": "string", "format": "date-time"}
    return [
        query("from", instant, "Start (ISO 8601; default: a day, 30 days or a year before "
              "`to`), moved back to the start of its window."),
        query("to", instant, "End, excluded (default: now), moved on to the end of its window."),
        query("window", {"enum": list(u.WINDOWS), "default": "day"}, "UTC hours, days or months."),
    ]  # fmt: skip


def openapi_paths(op: Any, account_id: dict[str, Any]) -> dict[str, Any]:
    """The two paths, built with the document's own operation builder ``op``."""
    window = _window_params()
    group = [
        {"name": "group_by", "in": "query", "required": False,
         "schema": {"enum": list(u.GROUPS), "default": "resource"}},
        {"name": "limit", "in": "query", "required": False,
         "description": "Groups returned: those that spent most over the range.",
         "schema": {"type": "integer", "minimum": 1, "maximum": u.MAX_LIMIT,
                    "default": u.DEFAULT_LIMIT}},
    ]  # fmt: skip
    pending = (
        " Spent, granted, earned, refunded, expired (positive) and adjusted (signed) credits "
        "per window: the ledger's, plus the outbox's transactions not yet in it (`pending`)."
    )
    by_member = {
        "name": "group_by", "in": "query", "required": False, "schema": {"enum": ["member"]},
        "description": "A pool's usage by member: a row per member it paid for, and its own "
        "charges under member_id null.",
    }  # fmt: skip
    one = op("An account's usage per window and resource", "read", (200, UsageOut),
             params=[account_id, *window, by_member], errors=(404, 422, 503))  # fmt: skip
    every = op("Every account's usage per window, by resource or account", "admin",
               (200, UsageOut), params=[*window, *group], errors=(422, 503))  # fmt: skip
    one["description"] += pending
    every["description"] += pending
    return {"/v1/accounts/{account_id}/usage": {"get": one}, "/v1/usage": {"get": every}}
