"""The HTTP protocol ``quotagate serve`` runs: uvicorn's httptools protocol, with the authz hook
answered in it, before ASGI.

The hook is one call per proxied request, and in front of every request its cost is the
product. Through ASGI each call builds a scope, a request/response cycle with its event, a
Starlette request and response, and two ``send`` messages that uvicorn checks header by header,
a large share of the hook's CPU (docs/benchmark.md). Here the parser's callbacks lead
straight to :meth:`~quotagate.api.routes.hook.Hook.answer`, and the answer is written in one piece.

Everything else about the connection stays uvicorn's: keep-alive and its timeout, pipelined
requests (answered in order), flow control, ``--limit-concurrency``, graceful shutdown, the
``Date`` header and the access log. Any other request, and a hook request the fast path does
not take (an absolute-form target, an upgrade), goes through ASGI as before, where the app
gives the same answer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from quotagate.api.routes.hook import PREFIX, Answer, Hook, header_map

_PREFIX = PREFIX.encode()
_NEXT = (ord("/"), ord("?"))


_UVICORN_FITS = all(
    hasattr(HttpToolsProtocol, name)
    for name in (
        "on_message_begin", "on_headers_complete", "on_body", "on_message_complete",
        "on_response_complete", "_unset_keepalive_if_required", "_start_asgi_task",
        "connection_lost",
    )
)  # fmt: skip
"""What this subclass overrides is there (uvicorn's protocol is not a public API); if a later
uvicorn moved it, the gateway serves the hook through ASGI, as any other route."""


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


_default_headers: tuple[object, bytes] = (None, b"")


def _rendered(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """uvicorn's default headers (the Date, replaced once a second) as bytes, made once per
    list uvicorn makes."""
    global _default_headers
    made_from, rendered = _default_headers
    if made_from is not default_headers:
        rendered = b"".join(b"%s: %s\r\n" % (name, value) for name, value in default_headers)
        _default_headers = (default_headers, rendered)
    return rendered


class GatewayProtocol(HttpToolsProtocol):
    """uvicorn's ``httptools`` protocol; answers hook requests itself (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hook = find_hook(self.app) if _UVICORN_FITS else None
        self._idle_since: float | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- per request, before the target is known: only what every request needs ------------

    def on_message_begin(self) -> None:
        # uvicorn builds the ASGI scope here; a hook request never uses one, so it is built
        # in on_headers_complete, for the requests that go on to ASGI.
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._asgi_scope_due = True

    def _begin_asgi(self) -> None:
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()  # the scope, as uvicorn makes it
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers

    # -- keep-alive: one timer per connection, not one armed and cancelled per request --------

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None

    def on_response_complete(self) -> None:
        # uvicorn's, but for the keep-alive timer (see above).
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            self._idle_since = None
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        since = self._idle_since
        if since is None or self.transport.is_closing():
            return  # busy again (its next response re-arms), or closed
        due = since + self.timeout_keep_alive
        if self.loop.time() >= due:
            self.transport.close()
        else:
            self._idle_timer = self.loop.call_at(due, self._idle_check)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def on_headers_complete(self) -> None:
        if (
            self.hook is None
            or not _is_hook_target(self.url)
            or self.parser.should_upgrade()
            or self._over_concurrency_limit()
        ):
            self._begin_asgi()
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
            cycle.start()
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

    def start(self) -> None:
        """Hand the request to the hook, which calls :meth:`respond` with its answer."""
        # Still percent-encoded, as the ASGI route reads it (hook.raw_path): decoded once, later.
        path = httptools.parse_url(self.url).path.decode("latin-1")
        self.hook.begin(self.method, path, header_map(self.headers), self.respond)

    async def run_asgi(self, app: object) -> None:
        """What uvicorn's protocol calls, in a task, for a pipelined request's turn."""
        self.start()

    def respond(self, answer: Answer) -> None:
        if self.disconnected:
            self.release()
        elif self.protocol.flow.write_paused:  # the client reads slowly: wait for it
            task = asyncio.ensure_future(self._respond_when_drained(answer))
            self.protocol.tasks.add(task)
            task.add_done_callback(self.protocol.tasks.discard)
        else:
            self._write(answer)
            self.release()

    async def _respond_when_drained(self, answer: Answer) -> None:
        try:
            await self.protocol.flow.drain()
            if not self.disconnected:
                self._write(answer)
        finally:
            self.release()

    def release(self) -> None:
        """The protocol holds this cycle until its next request: no reference cycle back."""
        del self.protocol

    def _write(self, answer: Answer) -> None:
        protocol = self.protocol
        transport = protocol.transport
        status, headers, body = answer
        out = [STATUS_LINE[status], _rendered(protocol.server_state.default_headers)]
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
