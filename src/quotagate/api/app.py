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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quotagate.api.errors import HttpError, MethodNotAllowed, NotFound
from quotagate.api.gateway import Gateway
from quotagate.api.problems import problem_response
from quotagate.api.routes import accounts, alerts, charges, credits, holds, hook, ops, ui, usage
from quotagate.api.routes.hook import Hook
from quotagate.config import Config
from quotagate.errors import QuotagateError
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
    return problem_response(QuotagateError("internal error"))


class _Gateway(Starlette):
    """Starlette, with the authz hook answered before the middleware stack and the router.

    The hook is one call per proxied request, and that stack (error middleware, exception
    middleware, router) would cost a good part of its CPU (docs/benchmark.md). Its errors are
    answered by the hook itself; an unexpected one is logged and answered as the app's handler
    would.
    """

    authz_hook: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if self.authz_hook is None or not hook.is_hook_path(path):
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.authz_hook(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            response = await _unexpected(Request(scope, receive), exc)
            await response(scope, receive, send)


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

    hook_routes = hook.routes(gw)
    app = _Gateway(
        # The router tries routes in order: the hot ones first.
        routes=[
            *hook_routes,
            *charges.routes(gw),
            *holds.routes(gw),
            *credits.routes(gw),
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
    app.authz_hook = next(r.app for r in hook_routes if isinstance(getattr(r, "app", None), Hook))
    return app
