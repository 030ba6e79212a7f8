"""The app factory: ``create_app(settings=None)`` builds the Starlette app.

``uvicorn --factory quotagate.api.app:create_app`` and ``quotagate serve`` both use it. The
backends are connected in the app's lifespan (so each uvicorn worker has its own connections,
made after the fork); routes are plain functions closed over the :class:`Gateway`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from quotagate.api.access import ASGI_SCOPE_KEY, Access, caller_request_id
from quotagate.api.front import Front, raw_path
from quotagate.api.gateway import Gateway
from quotagate.api.problems import INTERNAL_ERROR, problem_response
from quotagate.api.routes import (
    accounts,
    alerts,
    charges,
    credits,
    grants,
    holds,
    hook,
    ops,
    ui,
    usage,
)
from quotagate.api.routes.hook import Hook
from quotagate.api.service_endpoints import account_endpoints
from quotagate.config import Config
from quotagate.errors import HttpError, MethodNotAllowed, NotFound, QuotagateError
from quotagate.settings import Settings

log = logging.getLogger(__name__)


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method) as problem documents too."""
    assert isinstance(exc, HTTPException)
    error: QuotagateError
    if exc.status_code == 404:
        error = NotFound(f"no endpoint at {request.url.path}")
    elif exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed here")
    else:
        error = HttpError(str(exc.detail))
        error.http_status = exc.status_code
    response = problem_response(error)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _quotagate_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, QuotagateError)
    return problem_response(exc)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(INTERNAL_ERROR)


class _Gateway(Starlette):
    """Starlette, with the front (:mod:`quotagate.api.front`: the hook, consume, check,
    hold) answered before the middleware stack and the router.

    The hook is one call per proxied request, and that stack (error middleware, exception
    middleware, router) would cost a good part of its CPU (docs/benchmark.md). The front
    answers its own errors, an unexpected one included (logged, and a 500 problem document).
    """

    front: Front | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        found = self.front.match(scope["path"]) if self.front else None
        if found is None:
            await self._through_router(scope, receive, send)
            return
        scope["app"] = self
        endpoint, param = found
        await self.front.asgi(endpoint, param, scope, receive, send)  # type: ignore[union-attr]

    async def _through_router(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Starlette's way, with the access line and the request id (see
        :mod:`quotagate.api.access`); the endpoint fills in its route and account."""
        access = scope[ASGI_SCOPE_KEY] = Access(
            None, scope["method"], raw_path(scope), caller_request_id(scope["headers"]),
            charges=False,
        )  # fmt: skip
        answered = False

        async def send_with_id(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                headers = list(message.get("headers", ()))
                access.done(message["status"], headers)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await super().__call__(scope, receive, send_with_id)
        except BaseException:
            if not answered:  # the client will see the connection end: say so in the log
                access.done(500, [])
            raise

    @property
    def authz_hook(self) -> Hook | None:
        """The hook (for callers that drive it directly, as the memory test does)."""
        return self.front.hook if self.front else None  # type: ignore[return-value]


def create_app(settings: Settings | None = None, *, config: Config | None = None) -> Starlette:
    """The gateway app. ``settings`` default to the environment; ``config`` to the settings'."""
    settings = settings or Settings.from_env()
    gw = Gateway(settings, config or settings.load_config())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await gw.start()
        except BaseException:
            await gw.stop()
            raise
        # Everything alive now (modules, the app, the clients) lives as long as the process:
        # move it out of the collector's sight. Otherwise each full collection walks it all, a
        # pause of tens of milliseconds that sets the hook's p99 (docs/benchmark.md).
        gc.freeze()
        try:
            yield
        finally:
            await gw.stop()

    app = _Gateway(
        # The hot endpoints are the front's; the router tries the rest in order.
        routes=[
            *hook.routes(gw),
            *charges.routes(gw),
            *holds.routes(gw),
            *credits.routes(gw),
            *grants.routes(gw),
            *accounts.routes(gw),
            *usage.routes(gw),
            *alerts.routes(gw),
            *ops.routes(gw),
            *ui.routes(),
        ],
        exception_handlers={
            HTTPException: _http_exception,
            QuotagateError: _quotagate_error,
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
    app.state.gateway = gw
    app.front = Front(Hook(gw), account_endpoints(gw))
    return app
