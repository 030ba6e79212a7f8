"""What every endpoint shares: error mapping, metrics, keys and idempotency headers.

No middleware: each endpoint is wrapped once, at start, by :func:`endpoint`, which times it,
counts its answer and turns any quotagate error into its problem document (via
:mod:`quotagate.api.problems`, the one place that knows how).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from quotagate import metrics
from quotagate.api.access import access_of_scope
from quotagate.api.problems import problem_response
from quotagate.api.schemas import encode
from quotagate.engine.results import RateLimitState
from quotagate.errors import QuotagateError

Handler = Callable[[Request], Awaitable[Response]]

REPLAYED = {"Idempotent-Replayed": "true"}
DEGRADED = {"X-Quota-Degraded": "1"}
"""On an answer built without one backend: still right, but less complete (or, from the hook
in fail-open mode, not charged)."""


def endpoint(route: str, *, charges: bool = False) -> Callable[[Handler], Handler]:
    """Wrap a handler: errors become problems; every answer is counted under ``route``, and
    its access line names the route and the path's account (with a decision when the
    endpoint ``charges``)."""

    def wrap(handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            started = time.perf_counter()
            access = access_of_scope(request.scope)
            if access is not None:
                access.route, access.charges = route, charges
                access.account = request.path_params.get("account_id")
            try:
                response = await handler(request)
            except QuotagateError as exc:
                response = problem_response(exc)
            metrics.count_request(route, response.status_code, time.perf_counter() - started)
            return response

        run.__name__ = handler.__name__
        run.__doc__ = handler.__doc__
        return run

    return wrap


def note_account(request: Request, account_id: str) -> None:
    """The account a request names other than in its path (a settle's hold id)."""
    access = access_of_scope(request.scope)
    if access is not None:
        access.account = account_id


def note_cost(request: Request, cost: int) -> None:
    """The credits a request charged, for its access line."""
    access = access_of_scope(request.scope)
    if access is not None:
        access.cost = cost


def json_response(
    value: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(encode(value), status, headers, media_type="application/json")


def bearer(request: Request) -> str | None:
    """The key in ``Authorization: Bearer <key>``, or None."""
    return bearer_of(request.headers)


def bearer_of(headers: Mapping[str, str]) -> str | None:
    """The key in ``Authorization: Bearer <key>`` of ``headers`` (by lower-case name), or None."""
    header = headers.get("authorization")
    if not header:
        return None
    scheme, _, key = header.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else None


def idempotency_key(request: Request) -> str | None:
    return request.headers.get("idempotency-key")


def replay_headers(replayed: bool) -> Mapping[str, str] | None:
    return REPLAYED if replayed else None


def rate_limit_headers(state: RateLimitState | None) -> dict[str, str]:
    """RateLimit-* (IETF httpapi draft) for a tier with a request rate."""
    if state is None:
        return {}
    return {
        "RateLimit-Limit": str(state.limit),
        "RateLimit-Remaining": str(state.remaining),
        "RateLimit-Reset": str(reset_seconds(state)),
    }


def reset_seconds(state: RateLimitState) -> int:
    """RateLimit-Reset: whole seconds, rounded up."""
    return max(0, -(-state.reset_ms // 1000))
