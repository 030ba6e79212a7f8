"""The reverse-proxy hook (nginx auth_request, Traefik ForwardAuth, Envoy ext_authz) and
``/v1/me``, the end user's own account, as the ``[identity]`` mode names it.

The hook answers within ``authz.timeout_ms`` whatever Redis does: the charge runs under a
shared :class:`~quotagate.api.deadline.Deadline`; a Redis that is down or slow gives 503
(failure_mode "closed") or 200 with ``X-Quota-Degraded: 1`` ("open"). Every answer says why in
``X-Quota-Reason`` when it is not a plain allow, and denials carry a problem document, which
Traefik and Envoy pass on to the client.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Coroutine, Mapping
from functools import partial
from typing import NamedTuple

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotagate import metrics
from quotagate.api.access import Access
from quotagate.api.answers import Answer, Reply
from quotagate.api.deadline import Deadline
from quotagate.api.endpoint import DEGRADED, endpoint, json_response, reset_seconds
from quotagate.api.front import HOOK_PREFIX
from quotagate.api.front import Request as FrontRequest
from quotagate.api.gateway import Gateway
from quotagate.api.priced_path import normalized_path
from quotagate.api.problems import hook_problem, internal_error
from quotagate.api.views import account_view
from quotagate.auth.identity import KeysRefreshing, account_of_request
from quotagate.config import Route as RouteConfig
from quotagate.config import hold_ttl_seconds
from quotagate.engine.results import ChargeResult
from quotagate.errors import (
    AccountBanned,
    BackendError,
    BackendUnavailable,
    Forbidden,
    InvalidAmount,
    InvalidPath,
    QuotagateError,
    Unauthorized,
    ValidationError,
)

log = logging.getLogger(__name__)

HOOK_KEY = "x-quotagate-key"
"""The proxy's own key. The client's Authorization header is forwarded by proxies: not ours."""
PREFIX = HOOK_PREFIX
_ALLOWED = metrics.AUTHZ_DECISIONS.labels("allowed")
"""The counter child of every allowed answer, looked up once (labels() costs a lock)."""
MAX_DESCRIPTION = 200


def _deliver(out: asyncio.Future[Answer], answer: Answer) -> None:
    if not out.done():  # the caller may have been cancelled meanwhile
        out.set_result(answer)


def hook_key(h: Mapping[str, str]) -> str:
    """The proxy's own key, from ``X-Quotagate-Key``; a refusal that names that header when
    it is missing (an ``Authorization`` header is the client's, forwarded: never ours)."""
    key = h.get(HOOK_KEY)
    if key:
        return key
    if h.get("authorization"):
        raise Unauthorized(
            "the hook reads its key from X-Quotagate-Key, not from Authorization (which the "
            "proxy forwards from the client): set X-Quotagate-Key to a hook key"
        )
    raise Unauthorized("the hook needs a hook key in the X-Quotagate-Key header")


def _original(method: str, path: str, h: Mapping[str, str]) -> tuple[str, str]:
    """The proxied request's method and raw URI: nginx, Traefik, then Envoy's own request
    (``method`` and the still percent-encoded ``path`` of the hook request itself)."""
    for method_header, uri_header in (
        ("x-original-method", "x-original-uri"),
        ("x-forwarded-method", "x-forwarded-uri"),
    ):
        uri = h.get(uri_header)
        if uri:
            return h.get(method_header) or method, uri
    if not path.startswith(PREFIX):  # the hook's own prefix percent-encoded: no agreed reading
        raise InvalidPath("the hook's path spells /v1/authz with percent-escapes")
    return method, path[len(PREFIX) :] or "/"


def _checked_method(method: str) -> str:
    """The method in upper case (routes match it so); refused unless an HTTP token, since it
    goes into the charge's description."""
    if not (method.isascii() and method.isalpha()) and not _TOKEN.fullmatch(method):
        raise InvalidPath("the proxied request's method is not an HTTP method")
    return method.upper()


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")


UNITS_PATTERN = r"^([1-9][0-9]{0,11}|1000000000000)$"
"""X-Quota-Units: an integer from 1 to 10^12 in plain decimal (no sign, no leading zero)."""
_UNITS = re.compile(UNITS_PATTERN)


def _units(raw: str | None) -> int:
    if raw is None or raw == "1":
        return 1
    if not _UNITS.match(raw):
        raise InvalidAmount("X-Quota-Units must be an integer from 1 to 10^12", field="units")
    return int(raw)


_MODES = frozenset({"charge", "reserve"})
"""X-Quota-Mode: what the proxy asks of the hook for this request, trusted as X-Quota-Resource
is (the proxy sets it; its own client's copy never reaches the hook)."""


class Reservation(NamedTuple):
    """What a reserve-mode request holds: ``units`` of ``resource`` or ``amount`` credits."""

    resource: str | None
    units: int
    amount: int | None
    ttl_seconds: int
    max_overrun: int
    on_expiry: str


class Hook:
    """The hook's decision, apart from any HTTP server: an endpoint of the front
    (:mod:`quotagate.api.front`), which brings it every request to its paths, whatever the
    method (Envoy sends the client's), as soon as the headers are read."""

    route = "authz"
    methods: frozenset[str] | None = None
    reads_body = False

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.authz = gw.config.authz
        self.timeout_seconds = self.authz.timeout_ms / 1000
        self.deadline = Deadline(self.timeout_seconds)
        self._tasks: set[asyncio.Task[Answer]] = set()

    async def answer(self, method: str, path: str, headers: Mapping[str, str]) -> Answer:
        """The answer to one hook request (``path`` as sent); never raises but on
        cancellation."""
        out: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.begin(FrontRequest(method, path, "", headers), partial(_deliver, out))
        return await out

    def begin(self, request: FrontRequest, reply: Reply) -> None:
        """Start answering one hook request; ``reply(answer)`` is called once, now or from the
        event loop (the charge's done-callback). No task per request: creating and stepping
        one is a measurable part of the hook's CPU (docs/benchmark.md). The charge is bounded
        by the shared Deadline, which cancels it on expiry (an answer by the failure policy)."""
        h = request.headers
        access = Access(self.route, request.method, request.raw_path, h, charges=True)
        try:
            account_id = access.account = self._caller(h)
            charge = self._charge_for(request.method, request.raw_path, h)
            if charge is None:  # no route: a read, not a charge; rare enough for a task
                self._run_task(self._unmatched_answer(account_id, access), access, reply)
                return
            if isinstance(charge, Reservation):  # a hold: a task, as the hold endpoint's
                work = self._reserve(account_id, charge, h.get("x-request-id", ""))
                self._run_task(work, access, reply)
                return
            resource, units, description, shadow = charge
            fut = self.gw.engine.consume_soon(
                account_id, resource, units, description=description,
                idempotency_key=h.get("x-request-id") or None, idempotency_scope="hook",
                shadow=shadow,
            )  # fmt: skip
        except QuotagateError as exc:
            self._finish(access, reply, self._refusal(exc))
            return
        except KeysRefreshing as refreshing:  # a token's key not fetched yet: rare
            refreshing.fetch.add_done_callback(lambda _: self.begin(request, reply))
            return
        except Exception:
            log.exception("unexpected error in the authz hook (%s)", request.raw_path)
            self._finish(access, reply, internal_error())
            return
        self.deadline.watch(fut)
        fut.add_done_callback(partial(self._charged, account_id, access, reply))

    def _charged(
        self, account_id: str, access: Access, reply: Reply, fut: asyncio.Future[ChargeResult]
    ) -> None:
        try:
            if fut.cancelled():  # by the deadline
                answer = self._backend_down(account_id, TimeoutError())
            elif (exc := fut.exception()) is None:
                self.gw.flush_trigger.note_write(account_id)
                result = fut.result()
                access.cost = result.cost
                if result.shadow is not None:
                    access.decision = f"shadow_{result.shadow}"
                answer = self._allowed(account_id, result)
            elif isinstance(exc, BackendError):
                answer = self._backend_down(account_id, exc)
            elif isinstance(exc, QuotagateError):
                answer = self._refusal(exc)
            else:
                raise exc
        except Exception:
            log.exception("unexpected error in the authz hook")
            answer = internal_error()
        self._finish(access, reply, answer)

    def _run_task(self, work: Coroutine[None, None, Answer], access: Access, reply: Reply) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(partial(self._finish_task, access, reply))

    def _finish_task(self, access: Access, reply: Reply, task: asyncio.Task[Answer]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return  # the server is stopping: no answer to give
        exc = task.exception()
        if exc is not None:
            log.error("unexpected error in the authz hook", exc_info=exc)
        self._finish(access, reply, internal_error() if exc else task.result())

    @staticmethod
    def _finish(access: Access, reply: Reply, answer: Answer) -> None:
        metrics.count_request("authz", answer.status, time.perf_counter() - access.started)
        access.done(answer.status, answer.headers)
        reply(answer)

    def _caller(self, h: Mapping[str, str]) -> str:
        """The caller's account (see :mod:`quotagate.auth.identity`), once the proxy's own
        key is checked."""
        self.gw.keys.authorize(hook_key(h), "hook")
        return self.gw.identity.account_of(h)

    def _charge_for(
        self, method: str, path: str, h: Mapping[str, str]
    ) -> tuple[str, int, str, bool] | Reservation | None:
        """(resource, units, description, shadow) of the proxied request, or the Reservation
        it makes in reserve mode (its route's, or the proxy's ``X-Quota-Mode: reserve``); None
        when no route of the config matches it and the headers name no resource."""
        method, uri = _original(method, path, h)
        method, path = _checked_method(method), normalized_path(uri)
        resource = h.get("x-quota-resource")
        units = _units(h.get("x-quota-units"))
        mode = h.get("x-quota-mode")
        route = None
        if resource is None:
            route = self.authz.route_for(method, path)
            if route is None:
                return None
            if mode is None and route.mode == "charge":
                description = f"{method} {path}"[:MAX_DESCRIPTION]
                return route.resource or "", route.units, description, route.shadow
        elif mode is None:
            return resource, units, f"{method} {path}"[:MAX_DESCRIPTION], False
        return self._by_mode(mode, route, resource, units, f"{method} {path}"[:MAX_DESCRIPTION])

    def _by_mode(
        self, mode: str | None, route: RouteConfig | None, resource: str | None, units: int,
        description: str,
    ) -> tuple[str, int, str, bool] | Reservation:  # fmt: skip
        """A reserve route's request, or one whose proxy names the mode (X-Quota-Mode): apart
        from the charges' path, which it adds no step to."""
        if mode is not None and mode not in _MODES:
            raise ValidationError('X-Quota-Mode must be "charge" or "reserve"', field="mode")
        # What charges nothing holds nothing either: a shadow route, or a shadow resource, is a
        # shadow charge whatever the mode (the config lets no reserve route be either).
        if resource is None and route is not None and route.resource is not None:
            if route.shadow or route.resource in self.gw.config.shadow.resources:
                return route.resource, route.units, description, route.shadow
        elif resource is not None and resource in self.gw.config.shadow.resources:
            return resource, units, description, False  # the engine makes it a shadow charge
        if mode != "charge":  # "reserve", or a reserve route the proxy names no mode for
            return self._reservation(route, resource, units)
        if route is not None:
            if route.resource is None:
                raise ValidationError(
                    "this route's estimate is a cost in credits, not a resource: it can only "
                    "reserve (X-Quota-Mode: reserve)",
                    field="mode",
                )
            resource, units = route.resource, route.units
        assert resource is not None  # from the header, or the route's
        return resource, units, description, route is not None and route.shadow

    def _reservation(
        self, route: RouteConfig | None, resource: str | None, units: int
    ) -> Reservation:
        """What a reserve-mode request holds: the route's estimate and settings, or (the
        proxy named the resource, or the route charges) its price with the default settings."""
        ttl_seconds = self.gw.config.holds.default_ttl_seconds
        if route is None:
            return Reservation(resource, units, None, ttl_seconds, 0, "release")
        ttl_seconds = hold_ttl_seconds(route, self.gw.config.holds)
        if resource is None and route.cost is not None:
            resource, units, amount = None, 1, route.cost
        elif resource is None:
            resource, units, amount = route.resource, route.units, None
        else:
            amount = None
        return Reservation(resource, units, amount, ttl_seconds, route.max_overrun, route.on_expiry)

    async def _reserve(self, account_id: str, plan: Reservation, request_id: str) -> Answer:
        """Hold the estimate: 200 with the hold's id (what the upstream settles), or the usual
        refusal; bounded by the deadline as a charge is."""
        try:
            with self.deadline.bound():
                held = await self.gw.engine.reserve(
                    account_id, resource=plan.resource, units=plan.units, amount=plan.amount,
                    ttl_seconds=plan.ttl_seconds, max_overrun=plan.max_overrun,
                    on_expiry=plan.on_expiry, idempotency_key=request_id or None,
                    idempotency_scope="hook",
                )  # fmt: skip
        except (BackendError, TimeoutError) as exc:
            return self._backend_down(account_id, exc)
        except QuotagateError as exc:
            return self._refusal(exc)
        self.gw.flush_trigger.note_write(account_id)  # ending expired holds may charge
        metrics.TALLY.inc(_ALLOWED)
        headers = [
            (b"x-quota-account", account_id.encode()),
            (b"x-quota-hold-id", held.hold_id.encode()),
            (b"x-quota-held", b"%d" % held.amount),
            (b"x-quota-remaining", b"%d" % held.available),
        ]
        if held.replayed:
            headers.append((b"idempotent-replayed", b"true"))
        return Answer(200, headers)

    async def _unmatched_answer(self, account_id: str, access: Access) -> Answer:
        try:
            return await self._unmatched(account_id, access)
        except QuotagateError as exc:
            return self._refusal(exc)

    async def _unmatched(self, account_id: str, access: Access) -> Answer:
        if self.authz.unmatched == "deny":
            raise Forbidden("no route of the config matches this request", reason="no_route")
        try:
            with self.deadline.bound():
                account = await self.gw.engine.get_account(account_id)
        except (BackendError, TimeoutError) as exc:
            return self._backend_down(account_id, exc)
        if account.status == "banned":
            raise AccountBanned("the account is banned")
        metrics.TALLY.inc(_ALLOWED)
        access.cost = 0
        return Answer(200, [
            (b"x-quota-account", account_id.encode()), (b"x-quota-cost", b"0"),
            (b"x-quota-remaining", b"%d" % account.available),
        ])  # fmt: skip

    def _allowed(self, account_id: str, r: ChargeResult) -> Answer:
        metrics.TALLY.inc(_ALLOWED)
        # The account id passed ids.check_account_id: ASCII, nothing to escape.
        headers = [
            (b"x-quota-account", account_id.encode()),
            (b"x-quota-cost", b"%d" % r.cost),
            (b"x-quota-remaining", b"%d" % r.remaining),
        ]
        rl = r.rate_limit
        if rl is not None:
            headers += [
                (b"ratelimit-limit", b"%d" % rl.limit),
                (b"ratelimit-remaining", b"%d" % rl.remaining),
                (b"ratelimit-reset", b"%d" % reset_seconds(rl)),
            ]
        if r.replayed:
            headers.append((b"idempotent-replayed", b"true"))
        if r.shadow is not None:  # nothing charged: what the charge would have done
            metrics.count_shadow(r.shadow, "hook")
            headers.append((b"x-quota-shadow", r.shadow.encode()))
        return Answer(200, headers)

    def _backend_down(self, account_id: str, exc: BaseException) -> Answer:
        policy = self.authz.failure_mode
        metrics.TALLY.inc(metrics.AUTHZ_BACKEND_FAILURES.labels(policy))
        if policy == "open":
            metrics.TALLY.inc(metrics.AUTHZ_DECISIONS.labels("degraded"))
            return Answer(
                200, [(b"x-quota-account", account_id.encode()), (b"x-quota-degraded", b"1")]
            )
        error = exc if isinstance(exc, BackendError) else BackendUnavailable(
            f"Redis did not answer within {self.authz.timeout_ms} ms"
        )  # fmt: skip
        return self._refusal(error)

    def _refusal(self, exc: QuotagateError) -> Answer:
        """The hook's problem answer (:data:`quotagate.api.problems.HOOK_OVERRIDES`)."""
        reason, answer = hook_problem(exc, self.authz)
        metrics.TALLY.inc(metrics.AUTHZ_DECISIONS.labels(reason))
        return answer


def routes(gw: Gateway) -> list[Route]:
    """``/v1/me``; the hook's own paths are the front's (:mod:`quotagate.api.front`)."""

    @endpoint("me")
    async def me(request: Request) -> Response:
        gw.keys.authorize(hook_key(request.headers), "hook")
        account_id = await account_of_request(gw.identity, request.headers)
        view, degraded = await account_view(gw, account_id)
        return json_response(view, headers=DEGRADED if degraded else None)

    return [Route("/v1/me", me, methods=["GET"])]
