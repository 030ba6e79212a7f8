"""The HTTP protocol ``quotagate serve`` runs: uvicorn's httptools protocol, with the authz hook
answered in it, before ASGI.

The hook is one call per proxied request, and in front of every request its cost is the
product. Through ASGI each call builds a scope, a request/response cycle with its event, a
Starlette request and response, and two ``send`` messages that uvicorn checks header by header;
that was about a third of the hook's CPU. Here the parser's callbacks lead straight to
:meth:`~quotagate.api.routes.hook.Hook.answer`, and the answer is written in one piece.

Everything else about the connection stays uvicorn's: keep-alive and its timeout, pipelined
requests (answered in order), flow control, ``--limit-concurrency``, graceful shutdown, the
``Date`` header and the access log. Any other request, and a hook request the fast path does
not take (an absolute-form target, an upgrade), goes through ASGI as before, where the app
gives the same answer.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from quotagate.api.routes.hook import PREFIX, Answer, Hook, header_map

_PREFIX = PREFIX.encode()
_NEXT = (ord("/"), ord("?"))


def find_hook(app: Any) -> Hook | None:
    """The hook of the gateway app inside uvicorn's wrappers, or None for any other app."""
    for _ in range(8):
        hook = getattr(app, "authz_hook", None)
        if isinstance(hook, Hook):
            return hook
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def _is_hook_target(url: bytes) -> bool:
    """An origin-form target on the hook's paths: /v1/authz, /v1/authz/..., /v1/authz?..."""
    return url.startswith(_PREFIX) and (len(url) == len(_PREFIX) or url[len(_PREFIX)] in _NEXT)


class GatewayProtocol(HttpToolsProtocol):
    """uvicorn's ``httptools`` protocol; answers hook requests itself (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hook = find_hook(self.app)

    def on_headers_complete(self) -> None:
        if (
            self.hook is None
            or not _is_hook_target(self.url)
            or self.parser.should_upgrade()
            or self._over_concurrency_limit()
        ):
            super().on_headers_complete()
            return
        parser = self.parser
        http_version = parser.get_http_version()
        cycle = HookCycle(
            self,
            self.hook,
            parser.get_method().decode("ascii"),
            http_version,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
        )
        previous, self.cycle = self.cycle, cycle  # type: ignore[assignment]
        if previous is None or previous.response_complete:
            self._start_asgi_task(cycle, self.app)  # type: ignore[arg-type]
        else:  # a pipelined request: answered after the one before it, as uvicorn does
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))  # type: ignore[arg-type]

    def _over_concurrency_limit(self) -> bool:
        limit = self.limit_concurrency
        return limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit)

    # The hook reads no body: what a client sends with one is parsed and dropped.
    def on_body(self, body: bytes) -> None:
        if not isinstance(self.cycle, HookCycle):
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not isinstance(self.cycle, HookCycle):
            super().on_message_complete()


class _NoEvent:
    """Stands for the cycle's message event, which the protocol sets on disconnect."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_EVENT = _NoEvent()


class HookCycle:
    """One hook request on a connection: what uvicorn's protocol reads of a cycle
    (``response_complete``, ``keep_alive``, ``disconnected``, ``message_event``,
    ``run_asgi``), and the hook call and the write of its answer."""

    __slots__ = (
        "disconnected", "headers", "hook", "http_version", "keep_alive", "method", "protocol",
        "response_complete", "url",
    )  # fmt: skip
    message_event = _NO_EVENT

    def __init__(
        self,
        protocol: GatewayProtocol,
        hook: Hook,
        method: str,
        http_version: str,
        *,
        keep_alive: bool,
    ) -> None:
        self.protocol = protocol
        self.hook = hook
        self.method = method
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.url = protocol.url
        self.headers = protocol.headers
        self.disconnected = False
        self.response_complete = False

    async def run_asgi(self, app: object) -> None:
        """Named as uvicorn's cycle method, which its protocol calls: no ASGI is involved."""
        try:
            path = httptools.parse_url(self.url).path.decode("ascii")
            if "%" in path:
                path = unquote(path)
            answer = await self.hook.answer(self.method, path, header_map(self.headers))
            flow = self.protocol.flow
            if flow.write_paused and not self.disconnected:
                await flow.drain()
            if not self.disconnected:
                self._write(answer)
        finally:
            # The protocol holds this cycle until its next request: no reference cycle back.
            del self.protocol

    def _write(self, answer: Answer) -> None:
        protocol = self.protocol
        transport = protocol.transport
        status, headers, body = answer
        out = [STATUS_LINE[status]]
        for name, value in protocol.server_state.default_headers:
            out += (name, b": ", value, b"\r\n")
        for name, value in headers:
            out += (name, b": ", value, b"\r\n")
        out.append(b"content-length: %d\r\n" % len(body))
        if not self.keep_alive:
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        if self.method != "HEAD":
            out.append(body)
        transport.write(b"".join(out))
        self.response_complete = True
        if protocol.access_log:
            client = f"{protocol.client[0]}:{protocol.client[1]} - " if protocol.client else ""
            protocol.access_logger.info(
                '%s"%s %s HTTP/%s" %d',
                client,
                self.method,
                self.url.decode("latin-1"),
                self.http_version,
                status,
            )
        if not self.keep_alive:
            transport.close()
        protocol.on_response_complete()
