"""The barest app the HTTP server can serve: one route, no middleware, a fixed answer.

Served with the same uvicorn settings as the gateway, it is the ceiling any route can reach
on this machine; the gateway's own ``/healthz`` is the floor the hook is held to.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    gc.freeze()  # tuned as the gateway is: start-up objects out of the collector's sight
    yield


def create_app() -> Starlette:
    """The app factory uvicorn serves (``--factory``)."""
    return Starlette(routes=[Route("/healthz", healthz)], lifespan=_lifespan)
