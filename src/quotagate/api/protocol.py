"""The HTTP protocol ``quotagate serve`` runs: uvicorn's httptools protocol, with the front's
endpoints (:mod:`quotagate.api.front`: the hook, consume, check, hold) answered in it, before
ASGI.

The hook is one call per proxied request, and in front of every request its cost is the
product; consume is the same for services. Through ASGI each call builds a scope, a
request/response cycle with its event, a Starlette request and response, and two ``send``
messages that uvicorn checks header by header, a large share of the hook's CPU
(docs/benchmark.md). Here the parser's callbacks lead straight to the front's endpoint, and
the answer is written in one piece.

Everything else about the connection stays uvicorn's: keep-alive and its timeout, pipelined
requests (answered in order), flow control, ``--limit-concurrency``, graceful shutdown, the
``Date`` header and the access log. Any other request goes through ASGI as before, and so does
a request to the front that the protocol does not take (an absolute-form target, an upgrade,
``Expect: 100-continue``): the app hands it to the same front, which gives the same answer (one
past the concurrency limit gets uvicorn's 503, as any request).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from quotagate.api.answers import Answer
from quotagate.api.bodies import MAX_BODY_BYTES, body_too_large, declared_length_error
from quotagate.api.front import Endpoint, Front, Request, header_map

_UVICORN_FITS = all(
    hasattr(HttpToolsProtocol, name)
    for name in (
        "on_message_begin", "on_headers_complete", "on_body", "on_message_complete",
        "on_response_complete", "_unset_keepalive_if_required", "_start_asgi_task",
        "connection_lost",
    )
)  # fmt: skip
"""What this subclass overrides is there (uvicorn's protocol is not a public API); if a later
uvicorn moved it, every request goes through ASGI, where the app gives the same answers."""


def find_front(app: Any) -> Front | None:
    """The front of the gateway app inside uvicorn's wrappers, or None for any other app."""
    for _ in range(8):
        front = getattr(app, "front", None)
        if isinstance(front, Front):
            return front
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


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
    """uvicorn's ``httptools`` protocol; answers the front's requests itself (see the module
    doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.front = find_front(self.app) if _UVICORN_FITS else None
        self._idle_since: float | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- per request, before the target is known: only what every request needs ------------

    def on_message_begin(self) -> None:
        # uvicorn builds the ASGI scope here; a fast request never uses one, so it is built
        # in on_headers_complete, for the requests that go on to ASGI.
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def _begin_asgi(self) -> None:
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()  # the scope, as uvicorn makes it
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers

    def on_headers_complete(self) -> None:
        found = self._front_endpoint()
        if found is None:
            self._begin_asgi()
            super().on_headers_complete()
            return
        endpoint, request = found
        parser = self.parser
        http_version = parser.get_http_version()
        keep_alive = http_version != "1.0" and parser.should_keep_alive()
        cycle = FastCycle(self, endpoint, request, http_version, keep_alive=keep_alive)
        previous, self.cycle = self.cycle, cycle  # type: ignore[assignment]
        if previous is None or previous.response_complete:
            cycle.turn()
        else:  # a pipelined request: answered after the one before it, as uvicorn does
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))  # type: ignore[arg-type]

    def _front_endpoint(self) -> tuple[Endpoint, Request] | None:
        """The front's endpoint of this request and what it reads, or None: through ASGI."""
        front, url = self.front, self.url
        if (
            front is None
            or url[:1] != b"/"  # absolute-form (or asterisk-form) target
            or self.expect_100_continue
            or self.parser.should_upgrade()
            or self._over_concurrency_limit()
        ):
            return None
        raw = httptools.parse_url(url).path
        path = raw.decode("ascii")  # as uvicorn does: other bytes are a bad request
        found = front.match(unquote(path) if "%" in path else path)
        if found is None:
            return None
        endpoint, param = found
        method = self.parser.get_method().decode("ascii")
        return endpoint, Request(method, path, param, header_map(self.headers))

    def _over_concurrency_limit(self) -> bool:
        limit = self.limit_concurrency
        return limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if isinstance(cycle, FastCycle):
            cycle.add_body(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if isinstance(cycle, FastCycle):
            cycle.body_complete()
        else:
            super().on_message_complete()

    # -- keep-alive after a fast answer: one timer per connection, not one armed and
    # -- cancelled per answer. An answer through ASGI keeps uvicorn's own timer.

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None
        super()._unset_keepalive_if_required()

    def fast_response_complete(self) -> None:
        """uvicorn's ``on_response_complete``, but for the keep-alive timer (see above)."""
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
            return  # busy again (its next answer re-arms), or closed
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


class _NoEvent:
    """Stands for the cycle's message event, which the protocol sets on disconnect."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_EVENT = _NoEvent()


class FastCycle:
    """One request to the front on a connection: what uvicorn's protocol reads of a cycle
    (``response_complete``, ``keep_alive``, ``disconnected``, ``message_event``,
    ``run_asgi``), the body (for an endpoint that reads one, up to the cap), the endpoint's
    call and the write of its answer.

    It starts once it is its turn on the connection (the answers before it written) and its
    body, if it needs one, is read."""

    __slots__ = (
        "body_error", "body_parts", "body_size", "body_wanted", "disconnected", "endpoint",
        "http_version", "keep_alive", "protocol", "request", "response_complete", "turn_came",
        "url",
    )  # fmt: skip
    message_event = _NO_EVENT

    def __init__(
        self,
        protocol: GatewayProtocol,
        endpoint: Endpoint,
        request: Request,
        http_version: str,
        *,
        keep_alive: bool,
    ) -> None:
        self.protocol = protocol
        self.endpoint = endpoint
        self.request = request
        self.url = protocol.url
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.disconnected = False
        self.response_complete = False
        self.turn_came = False
        self.body_wanted = endpoint.reads_body
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.body_error = (
            declared_length_error(request.headers.get("content-length"))
            if self.body_wanted
            else None
        )

    # -- the body: what a client sends to the hook is parsed and dropped --------------------

    def add_body(self, data: bytes) -> None:
        if not self.body_wanted or self.body_error is not None:
            return
        self.body_size += len(data)
        if self.body_size > MAX_BODY_BYTES:  # the rest is read past, not kept
            self.body_error, self.body_parts = body_too_large(), []
        else:
            self.body_parts.append(data)

    def body_complete(self) -> None:
        if self.body_wanted:
            self.body_wanted = False
            if self.turn_came:
                self.start()

    def turn(self) -> None:
        """Its turn on the connection has come."""
        self.turn_came = True
        if not self.body_wanted:
            self.start()

    async def run_asgi(self, app: object) -> None:
        """What uvicorn's protocol calls, in a task, for a pipelined request's turn."""
        self.turn()

    def start(self) -> None:
        request = self.request
        if self.endpoint.reads_body:
            method, raw_path, param, headers = request[:4]
            body = b"".join(self.body_parts)
            request = Request(method, raw_path, param, headers, body, self.body_error)
            self.body_parts = []
        Front.begin(self.endpoint, request, self.respond)

    # -- the answer ---------------------------------------------------------------------

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
        method = self.request.method
        out = [STATUS_LINE[status], _rendered(protocol.server_state.default_headers)]
        for name, value in headers:
            out += (name, b": ", value, b"\r\n")
        out.append(b"content-length: %d\r\n" % len(body))
        if not self.keep_alive:
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        if method != "HEAD":
            out.append(body)
        transport.write(b"".join(out))
        self.response_complete = True
        if protocol.access_log:
            client = f"{protocol.client[0]}:{protocol.client[1]} - " if protocol.client else ""
            protocol.access_logger.info(
                '%s"%s %s HTTP/%s" %d',
                client,
                method,
                self.url.decode("latin-1"),
                self.http_version,
                status,
            )
        if not self.keep_alive:
            transport.close()
        protocol.fast_response_complete()
