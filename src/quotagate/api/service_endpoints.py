"""Consume, check and hold: the hot endpoints of services, answered by the front
(:mod:`quotagate.api.front`) on the same path as the hook, without ASGI under
``quotagate serve``.

Each checks the service key, decodes the body, starts one engine call and answers from its
future's done-callback: no task per request for consume, which the engine starts as a future
(:meth:`~quotagate.engine.CreditEngine.consume_soon`); check and hold run as a task. Errors
become answers through :mod:`quotagate.api.problems`, as everywhere else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from functools import partial
from typing import Generic, TypeVar

from quotagate import metrics
from quotagate.api.access import Access
from quotagate.api.answers import Answer, RawHeaders, Reply, json_answer
from quotagate.api.bodies import decode
from quotagate.api.endpoint import bearer_of, reset_seconds
from quotagate.api.front import Endpoint, Request
from quotagate.api.gateway import Gateway
from quotagate.api.problems import internal_error, problem_answer
from quotagate.api.schemas import (
    ChargeOut,
    CheckOut,
    CheckRequest,
    ConsumeRequest,
    HoldOut,
    HoldRequest,
)
from quotagate.api.views import pool_payment_out
from quotagate.engine.results import ChargeResult, CheckResult, HoldResult, RateLimitState
from quotagate.errors import BackendUnavailable, QuotagateError, ValidationError

log = logging.getLogger(__name__)

POST = frozenset({"POST"})
REPLAYED = (b"idempotent-replayed", b"true")

R = TypeVar("R")


def rate_limit_raw(state: RateLimitState | None) -> RawHeaders:
    """RateLimit-* (IETF httpapi draft) for a tier with a request rate."""
    if state is None:
        return []
    return [
        (b"ratelimit-limit", b"%d" % state.limit),
        (b"ratelimit-remaining", b"%d" % state.remaining),
        (b"ratelimit-reset", b"%d" % reset_seconds(state)),
    ]


class ServiceEndpoint(Generic[R]):
    """One POST endpoint of services: the key check, the call, and its answer or problem."""

    route = ""
    """Its name in the request metrics."""
    methods: frozenset[str] | None = POST
    reads_body = True

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.engine = gw.engine

    def begin(self, request: Request, reply: Reply) -> None:
        access = Access(self.route, request.method, request.raw_path, request.headers, charges=True)
        access.account = request.param
        try:
            self.gw.keys.authorize(bearer_of(request.headers), "service")
            if request.body_error is not None:
                raise request.body_error
            fut = self.start(request)
        except QuotagateError as exc:
            self._finish(access, reply, problem_answer(exc))
            return
        fut.add_done_callback(partial(self._done, request, access, reply))

    def start(self, request: Request) -> asyncio.Future[R]:
        """Start the engine call (bad input raises here, before any call)."""
        raise NotImplementedError

    def answer(self, request: Request, result: R) -> Answer:
        raise NotImplementedError

    def note(self, access: Access, result: R) -> None:
        """What the access line says of ``result``: the credits charged or set aside."""
        raise NotImplementedError

    def _done(self, request: Request, access: Access, reply: Reply, fut: asyncio.Future[R]) -> None:
        try:
            if fut.cancelled():
                error = BackendUnavailable("the call was cancelled (the gateway is stopping)")
                answer = problem_answer(error)
            elif (exc := fut.exception()) is None:
                result = fut.result()
                self.note(access, result)
                answer = self.answer(request, result)
            elif isinstance(exc, QuotagateError):
                answer = problem_answer(exc)
            else:
                raise exc
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.raw_path)
            answer = internal_error()
        self._finish(access, reply, answer)

    def _finish(self, access: Access, reply: Reply, answer: Answer) -> None:
        metrics.count_request(self.route, answer.status, time.perf_counter() - access.started)
        access.done(answer.status, answer.headers)
        reply(answer)


def _task(coro: Awaitable[R]) -> asyncio.Future[R]:
    return asyncio.ensure_future(coro)


class Consume(ServiceEndpoint[ChargeResult]):
    route = "consume"

    def start(self, request: Request) -> asyncio.Future[ChargeResult]:
        body = decode(request.body, ConsumeRequest)
        return self.engine.consume_soon(
            request.param, body.resource, body.units, description=body.description,
            metadata=body.metadata, idempotency_key=request.headers.get("idempotency-key"),
        )  # fmt: skip

    def note(self, access: Access, result: ChargeResult) -> None:
        access.cost = result.cost
        if result.shadow is not None:
            access.decision = f"shadow_{result.shadow}"

    def answer(self, request: Request, r: ChargeResult) -> Answer:
        self.gw.flush_trigger.note_write(request.param)
        headers = rate_limit_raw(r.rate_limit)
        if r.replayed:
            headers.append(REPLAYED)
        if r.shadow is not None:
            metrics.count_shadow(r.shadow, "api")
            headers.append((b"x-quota-shadow", r.shadow.encode()))
        out = ChargeOut(r.transaction_id, r.cost, r.remaining, r.shadow, pool_payment_out(r.pool))
        return json_answer(out, headers=headers)


class Check(ServiceEndpoint[CheckResult]):
    route = "check"

    def start(self, request: Request) -> asyncio.Future[CheckResult]:
        body = decode(request.body, CheckRequest)
        return _task(self.engine.check(request.param, body.resource, body.units))

    def note(self, access: Access, result: CheckResult) -> None:
        access.cost = result.cost
        access.decision = "allowed" if result.allowed else "denied"

    def answer(self, request: Request, r: CheckResult) -> Answer:
        return json_answer(CheckOut(r.allowed, r.cost, r.available))


class Hold(ServiceEndpoint[HoldResult]):
    route = "hold"

    def start(self, request: Request) -> asyncio.Future[HoldResult]:
        body = decode(request.body, HoldRequest)
        if (body.resource is None) == (body.amount is None):
            raise ValidationError('a hold names either "resource" (and "units") or "amount"')
        if body.units is not None and body.resource is None:
            raise ValidationError('"units" goes with "resource"', field="units")
        return _task(
            self.engine.hold(
                request.param, resource=body.resource, units=body.units or 1,
                amount=body.amount, ttl_seconds=body.ttl_seconds,
                idempotency_key=request.headers.get("idempotency-key"),
            )
        )  # fmt: skip

    def note(self, access: Access, result: HoldResult) -> None:
        access.cost = result.amount

    def answer(self, request: Request, r: HoldResult) -> Answer:
        self.gw.flush_trigger.note_write(request.param)
        headers = [REPLAYED] if r.replayed else []
        return json_answer(HoldOut(r.hold_id, r.amount, r.expires_at, r.available), 201, headers)


def account_endpoints(gw: Gateway) -> dict[str, Endpoint]:
    """The front's endpoints under ``/v1/accounts/{account_id}/``, by the path's last segment."""
    return {"consume": Consume(gw), "check": Check(gw), "holds": Hold(gw)}
