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
from collections.abc import Callable, Mapping
from functools import partial
from typing import NamedTuple
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from quotagate import metrics
from quotagate.api.deadline import Deadline
from quotagate.api.endpoint import DEGRADED, endpoint, json_response, reset_seconds
from quotagate.api.errors import Forbidden
from quotagate.api.gateway import Gateway
from quotagate.api.priced_path import InvalidPath, normalized_path
from quotagate.api.problems import problem_response, retry_after_seconds
from quotagate.api.views import account_view
from quotagate.auth.identity import KeysRefreshing, account_of_request
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

log = logging.getLogger(__name__)

HOOK_KEY = "x-quotagate-key"
"""The proxy's own key. The client's Authorization header is forwarded by proxies: not ours."""
PREFIX = "/v1/authz"
_SUBPATHS = PREFIX + "/"
_ALLOWED = metrics.AUTHZ_DECISIONS.labels("allowed")
"""The counter child of every allowed answer, looked up once (labels() costs a lock)."""
MAX_DESCRIPTION = 200

RawHeaders = list[tuple[bytes, bytes]]


class Answer(NamedTuple):
    """The hook's answer, whatever carries it: status, headers (lower-case names, no
    Content-Length: the carrier adds it) and body."""

    status: int
    headers: RawHeaders
    body: bytes = b""

    @classmethod
    def of(cls, response: Response) -> Answer:
        raw = [(k, v) for k, v in response.raw_headers if k != b"content-length"]
        return cls(response.status_code, raw, bytes(response.body))


Reply = Callable[[Answer], None]


def _deliver(out: asyncio.Future[Answer], answer: Answer) -> None:
    if not out.done():  # the caller may have been cancelled meanwhile
        out.set_result(answer)


def _internal_error() -> Answer:
    return Answer.of(problem_response(QuotagateError("internal error")))


def header_map(raw: RawHeaders) -> dict[str, str]:
    """Headers by lower-case name, built once; the first of a repeated name wins, as with
    ``request.headers.get``, which scans them all and raises KeyError for every absent name."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(raw)}


def raw_path(scope: Scope) -> str:
    """The request's path as sent, still percent-encoded, as Latin-1 text: the hook prices
    what the upstream gets, decoded once, so it must not see the server's decoded copy. A
    server that gives no ``raw_path`` (it is optional in ASGI) has it encoded again."""
    raw = scope.get("raw_path")
    if raw is None:
        return quote(scope["path"], safe="/!$&'()*+,;=:@-._~")
    return bytes(raw).decode("latin-1")


def is_hook_path(path: str) -> bool:
    return path == PREFIX or path.startswith(_SUBPATHS)


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


class Hook:
    """The hook's decision, apart from any HTTP server: :meth:`answer` takes the request's
    method, path and headers and gives an :class:`Answer`. ``quotagate serve`` calls it from
    its HTTP protocol (:mod:`quotagate.api.protocol`), before ASGI; as an ASGI app it serves
    the same answers under any other server."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.authz = gw.config.authz
        self.timeout_seconds = self.authz.timeout_ms / 1000
        self.deadline = Deadline(self.timeout_seconds)
        self._tasks: set[asyncio.Task[Answer]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A plain ASGI app, so that every HTTP method (Envoy passes the client's) reaches it."""
        answer = await self.answer(scope["method"], raw_path(scope), header_map(scope["headers"]))
        headers = [*answer.headers, (b"content-length", b"%d" % len(answer.body))]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def answer(self, method: str, path: str, headers: Mapping[str, str]) -> Answer:
        """The answer to one hook request; never raises but on cancellation."""
        out: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.begin(method, path, headers, partial(_deliver, out))
        return await out

    def begin(self, method: str, path: str, h: Mapping[str, str], reply: Reply) -> None:
        """Start answering one hook request; ``reply(answer)`` is called once, now or from the
        event loop (the charge's done-callback). No task per request: creating and stepping
        one is a measurable part of the hook's CPU (docs/benchmark.md). The charge is bounded
        by the shared Deadline, which cancels it on expiry (an answer by the failure policy)."""
        started = time.perf_counter()
        try:
            account_id = self._caller(h)
            charge = self._charge_for(method, path, h)
            if charge is None:  # no route: a read, not a charge; rare enough for a task
                task = asyncio.ensure_future(self._unmatched_answer(account_id))
                self._tasks.add(task)
                task.add_done_callback(partial(self._finish_task, started, reply))
                return
            resource, units, description = charge
            fut = self.gw.engine.consume_soon(
                account_id, resource, units, description=description,
                idempotency_key=h.get("x-request-id") or None, idempotency_scope="hook",
            )  # fmt: skip
        except QuotagateError as exc:
            self._finish(started, reply, self._refusal(exc))
            return
        except KeysRefreshing as refreshing:  # a token's key not fetched yet: rare
            refreshing.fetch.add_done_callback(lambda _: self.begin(method, path, h, reply))
            return
        except Exception:
            log.exception("unexpected error in the authz hook (%s %s)", method, path)
            self._finish(started, reply, _internal_error())
            return
        self.deadline.watch(fut)
        fut.add_done_callback(partial(self._charged, account_id, started, reply))

    def _charged(
        self, account_id: str, started: float, reply: Reply, fut: asyncio.Future[ChargeResult]
    ) -> None:
        try:
            if fut.cancelled():  # by the deadline
                answer = self._backend_down(account_id, TimeoutError())
            elif (exc := fut.exception()) is None:
                self.gw.flush_trigger.note_write(account_id)
                answer = self._allowed(account_id, fut.result())
            elif isinstance(exc, BackendError):
                answer = self._backend_down(account_id, exc)
            elif isinstance(exc, QuotagateError):
                answer = self._refusal(exc)
            else:
                raise exc
        except Exception:
            log.exception("unexpected error in the authz hook")
            answer = _internal_error()
        self._finish(started, reply, answer)

    def _finish_task(self, started: float, reply: Reply, task: asyncio.Task[Answer]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return  # the server is stopping: no answer to give
        exc = task.exception()
        if exc is not None:
            log.error("unexpected error in the authz hook", exc_info=exc)
        self._finish(started, reply, _internal_error() if exc else task.result())

    @staticmethod
    def _finish(started: float, reply: Reply, answer: Answer) -> None:
        metrics.count_request("authz", answer.status, time.perf_counter() - started)
        reply(answer)

    def _caller(self, h: Mapping[str, str]) -> str:
        """The caller's account (see :mod:`quotagate.auth.identity`), once the proxy's own
        key is checked."""
        self.gw.keys.authorize(h.get(HOOK_KEY), "hook")
        return self.gw.identity.account_of(h)

    def _charge_for(
        self, method: str, path: str, h: Mapping[str, str]
    ) -> tuple[str, int, str] | None:
        """(resource, units, description) of the proxied request; None when no route of the
        config matches it and the headers name no resource."""
        method, uri = _original(method, path, h)
        method, path = _checked_method(method), normalized_path(uri)
        resource = h.get("x-quota-resource")
        units = _units(h.get("x-quota-units"))
        if resource is None:
            route = self.authz.route_for(method, path)
            if route is None:
                return None
            resource, units = route.resource, route.units
        return resource, units, f"{method} {path}"[:MAX_DESCRIPTION]

    async def _unmatched_answer(self, account_id: str) -> Answer:
        try:
            return await self._unmatched(account_id)
        except QuotagateError as exc:
            return self._refusal(exc)

    async def _unmatched(self, account_id: str) -> Answer:
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
        reason = str(exc.extra.pop("reason", exc.code))
        headers = {"X-Quota-Reason": reason}
        status = exc.http_status
        if isinstance(exc, InsufficientCredits):
            status = self.authz.deny_status
            headers["X-Quota-Remaining"] = str(exc.available)
        elif isinstance(exc, RateLimited):
            status = self.authz.rate_limited_status
            headers["Retry-After"] = str(retry_after_seconds(exc.retry_after_ms))
        elif isinstance(exc, InvalidPath):
            status = self.authz.invalid_path_status
        elif isinstance(exc, AccountNotFound):
            status = 403  # an unknown account may not pass; 404 would read as "no such page"
        elif isinstance(exc, BackendError):
            headers["Retry-After"] = "1"
        metrics.TALLY.inc(metrics.AUTHZ_DECISIONS.labels(reason))
        return Answer.of(problem_response(exc, status, headers))


def routes(gw: Gateway) -> list[Route]:
    hook = Hook(gw)

    @endpoint("me")
    async def me(request: Request) -> Response:
        gw.keys.authorize(request.headers.get(HOOK_KEY), "hook")
        account_id = await account_of_request(gw.identity, request.headers)
        view, degraded = await account_view(gw, account_id)
        return json_response(view, headers=DEGRADED if degraded else None)

    return [
        Route(PREFIX, hook),
        Route(PREFIX + "/{path:path}", hook),
        Route("/v1/me", me, methods=["GET"]),
    ]
