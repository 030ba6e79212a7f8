"""The operator page: static files shipped in the package (``quotagate/api/ui``), no build.

``GET /ui`` and ``GET /ui/{name}`` serve them to anyone: the page holds no data. Everything
it shows it reads from the HTTP API with the admin key the operator types in, as any client
does, so a missing or wrong key is refused by the API itself.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotagate.api.endpoint import endpoint
from quotagate.errors import NotFound

FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
HEADERS = {
    # Only our own files and our own API; no framing by other sites.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return (resources.files("quotagate.api") / "ui" / name).read_bytes()


def routes() -> list[Route]:
    shipped = {name: _read(name) for name in FILES}

    @endpoint("ui")
    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in shipped:
            raise NotFound(f"no file {name} in the operator page")
        return Response(shipped[name], headers={**HEADERS, "Content-Type": FILES[name]})

    return [Route("/ui", page, methods=["GET"]), Route("/ui/{name}", page, methods=["GET"])]
