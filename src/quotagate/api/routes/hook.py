"""The reverse-proxy hook (nginx auth_request, Traefik ForwardAuth, Envoy ext_authz) and
``/v1/me``, the end user's own account as the proxy names it.

The hook answers within ``authz.timeout_ms`` whatever Redis does: the charge runs under a
shared :class:`~quotagate.api.deadline.Deadline`; a Redis that is down or slow gives 503
(failure_mode "closed") or 200 with ``X-Quota-Degraded: 1`` ("open"). Every answer says why in
``X-Quota-Reason`` when it is not a plain allow, and denials carry a problem document, which
Traefik and Envoy pass on to the client.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from quotagate import ids, metrics
from quotagate.api.deadline import Deadline
from quotagate.api.endpoint import DEGRADED, endpoint, json_response, rate_limit_headers
from quotagate.api.errors import Forbidden, Unauthorized
from quotagate.api.gateway import Gateway
from quotagate.api.problems import problem_response, retry_after_seconds
from quotagate.api.views import account_view
from quotagate.engine.results import ChargeResult
from quotagate.errors import (
    AccountBanned,
    AccountNotFound,
    BackendError,
    BackendUnavailable,
    InsufficientCredits,
    InvalidAmount,
    QuotagateError,
    RateLimited,
)

HOOK_KEY = "x-quotagate-key"
"""The proxy's own key. The client's Authorization header is forwarded by proxies: not ours."""
PREFIX = "/v1/authz"
_ALLOWED = metrics.AUTHZ_DECISIONS.labels("allowed")
"""The counter child of every allowed answer, looked up once (labels() costs a lock)."""
MAX_DESCRIPTION = 200


def _headers(request: Request) -> dict[str, str]:
    """The request's headers by name, built once; the first of a repeated name wins, as with
    ``request.headers.get``, which scans them all and raises KeyError for every absent name."""
    raw = request.scope["headers"]
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(raw)}


def _identity(h: Mapping[str, str]) -> str:
    account_id = h.get("x-account-id")
    if not account_id:
        raise Unauthorized("no identity: the proxy sent no X-Account-Id", reason="no_identity")
    return account_id


def _original(request: Request, h: Mapping[str, str]) -> tuple[str, str]:
    """The proxied request's method and path: nginx, Traefik, then Envoy's own request."""
    for method_header, uri_header in (
        ("x-original-method", "x-original-uri"),
        ("x-forwarded-method", "x-forwarded-uri"),
    ):
        uri = h.get(uri_header)
        if uri:
            return h.get(method_header) or request.method, uri
    # The scope's path, escaped as request.url would, without building a URL per request.
    path = request.scope["path"].replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
    return request.method, path[len(PREFIX) :] or "/"


def normalized_path(uri: str) -> str:
    """The path a route is priced on: without the query, percent-decoded, with ``.``, ``..``
    and repeated slashes resolved, as the upstream will see it. Raw URIs would let
    ``/api/./premium/x`` pass for ``/api/*`` instead of ``/api/premium/*``."""
    path = unquote(uri.split("?", 1)[0].split("#", 1)[0]) or "/"
    clean = "/" + posixpath.normpath("/" + path).lstrip("/")
    if path.endswith("/") and clean != "/":
        clean += "/"
    return clean


def _units(raw: str | None) -> int:
    if raw is None:
        return 1
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 13) or not 1 <= int(raw) <= 10**12:
        raise InvalidAmount("X-Quota-Units must be an integer from 1 to 10^12", field="units")
    return int(raw)


class Hook:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.authz = gw.config.authz
        self.timeout_seconds = self.authz.timeout_ms / 1000
        self.deadline = Deadline(self.timeout_seconds)
        self.handle = endpoint("authz")(self._handle)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A plain ASGI app, so that every HTTP method (Envoy passes the client's) reaches it."""
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def _handle(self, request: Request) -> Response:
        try:
            h = _headers(request)
            self.gw.keys.authorize(h.get(HOOK_KEY), "hook")
            account_id = _identity(h)
            try:
                ids.check_account_id(account_id)
            except QuotagateError:
                raise Forbidden(
                    "X-Account-Id is not a valid account id", reason="unknown_account"
                ) from None
            return await self._decide(request, h, account_id)
        except QuotagateError as exc:
            return self._refusal(exc)

    async def _decide(self, request: Request, h: Mapping[str, str], account_id: str) -> Response:
        method, uri = _original(request, h)
        path = normalized_path(uri)
        resource = h.get("x-quota-resource")
        units = _units(h.get("x-quota-units"))
        if resource is None:
            route = self.authz.route_for(method, path)
            if route is None:
                return await self._unmatched(account_id)
            resource, units = route.resource, route.units
        description = f"{method} {path}"[:MAX_DESCRIPTION]
        try:
            # A shared Deadline, not asyncio.timeout: no timer armed per request.
            with self.deadline.bound():
                result = await self.gw.engine.consume(
                    account_id, resource, units, description=description,
                    idempotency_key=h.get("x-request-id") or None,
                )  # fmt: skip
        except (BackendError, TimeoutError) as exc:
            return self._backend_down(account_id, exc)
        self.gw.flush_trigger.note_write(account_id)
        return self._allowed(account_id, result)

    async def _unmatched(self, account_id: str) -> Response:
        if self.authz.unmatched == "deny":
            raise Forbidden("no route of the config matches this request", reason="no_route")
        try:
            with self.deadline.bound():
                account = await self.gw.engine.get_account(account_id)
        except (BackendError, TimeoutError) as exc:
            return self._backend_down(account_id, exc)
        if account.status == "banned":
            raise AccountBanned("the account is banned")
        metrics.AUTHZ_DECISIONS.labels("allowed").inc()
        return Response(
            status_code=200,
            headers={"X-Quota-Account": account_id, "X-Quota-Cost": "0",
                     "X-Quota-Remaining": str(account.available)},
        )  # fmt: skip

    def _allowed(self, account_id: str, r: ChargeResult) -> Response:
        _ALLOWED.inc()
        headers = {
            "X-Quota-Account": account_id,
            "X-Quota-Cost": str(r.cost),
            "X-Quota-Remaining": str(r.remaining),
            **rate_limit_headers(r.rate_limit),
        }
        if r.replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(status_code=200, headers=headers)

    def _backend_down(self, account_id: str, exc: BaseException) -> Response:
        policy = self.authz.failure_mode
        metrics.AUTHZ_BACKEND_FAILURES.labels(policy).inc()
        if policy == "open":
            metrics.AUTHZ_DECISIONS.labels("degraded").inc()
            return Response(
                status_code=200,
                headers={"X-Quota-Account": account_id, "X-Quota-Degraded": "1"},
            )
        error = exc if isinstance(exc, BackendError) else BackendUnavailable(
            f"Redis did not answer within {self.authz.timeout_ms} ms"
        )  # fmt: skip
        return self._refusal(error)

    def _refusal(self, exc: QuotagateError) -> Response:
        reason = str(exc.extra.pop("reason", exc.code))
        headers = {"X-Quota-Reason": reason}
        status = exc.http_status
        if isinstance(exc, InsufficientCredits):
            status = self.authz.deny_status
            headers["X-Quota-Remaining"] = str(exc.available)
        elif isinstance(exc, RateLimited):
            status = self.authz.rate_limited_status
            headers["Retry-After"] = str(retry_after_seconds(exc.retry_after_ms))
        elif isinstance(exc, AccountNotFound):
            status = 403  # an unknown account may not pass; 404 would read as "no such page"
        elif isinstance(exc, BackendError):
            headers["Retry-After"] = "1"
        metrics.AUTHZ_DECISIONS.labels(reason).inc()
        return problem_response(exc, status, headers)


def routes(gw: Gateway) -> list[Route]:
    hook = Hook(gw)

    @endpoint("me")
    async def me(request: Request) -> Response:
        gw.keys.authorize(request.headers.get(HOOK_KEY), "hook")
        view, degraded = await account_view(gw, _identity(request.headers))
        return json_response(view, headers=DEGRADED if degraded else None)

    return [
        Route(PREFIX, hook),
        Route(PREFIX + "/{path:path}", hook),
        Route("/v1/me", me, methods=["GET"]),
    ]
