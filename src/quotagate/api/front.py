"""The one way in to the hot endpoints: the authz hook, and consume, check and hold.

:class:`Front` is their table: it knows which requests it answers from the path alone
(decoded, as the router reads it), and each endpoint answers through ``begin(request,
reply)``, which calls ``reply(answer)`` once, now or from the event loop. Two carriers bring
requests to it, and both write its answers the same way (the answer's headers in order, then
Content-Length), so an answer is the same byte for byte whichever carried it:

- quotagate's HTTP protocol (:mod:`quotagate.api.protocol`), straight from the parser's
  callbacks, without ASGI: what ``quotagate serve`` runs;
- :meth:`Front.asgi`, which the app calls before its router: under any other server, and for
  the requests the protocol leaves to ASGI (an absolute-form target, an upgrade,
  ``Expect: 100-continue``; a request past ``--limit-concurrency`` gets uvicorn's 503).

A request to one of these paths with a method the endpoint does not take is answered 405 here,
as the router would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from functools import partial
from typing import NamedTuple, Protocol

from starlette.types import Receive, Scope, Send

from quotagate.api.access import Access
from quotagate.api.answers import Answer, RawHeaders, Reply
from quotagate.api.bodies import MAX_BODY_BYTES, body_too_large, declared_length_error
from quotagate.api.problems import internal_error, problem_answer
from quotagate.errors import MethodNotAllowed, QuotagateError

log = logging.getLogger(__name__)

HOOK_PREFIX = "/v1/authz"
ACCOUNTS_PREFIX = "/v1/accounts/"


class Request(NamedTuple):
    """What an endpoint of the front reads of a request."""

    method: str
    raw_path: str
    """As sent, still percent-encoded, as Latin-1 text (the hook prices it decoded once)."""
    param: str
    """The account id in the path, decoded; empty on the hook."""
    headers: Mapping[str, str]
    """By lower-case name; the first of a repeated name."""
    body: bytes = b""
    body_error: QuotagateError | None = None
    """Why the body was not read whole (it is above the cap); raised once the key is checked."""


class Endpoint(Protocol):
    route: str
    """Its name in the request metrics and the access line."""
    methods: frozenset[str] | None
    """The methods it takes; None: any (the hook, which Envoy sends the client's)."""
    reads_body: bool
    """Whether it waits for the body; the hook answers once the headers are read."""

    def begin(self, request: Request, reply: Reply) -> None: ...


def header_map(raw: RawHeaders) -> dict[str, str]:
    """Headers by lower-case name, built once; the first of a repeated name wins, as with
    ``request.headers.get``, which scans them all and raises KeyError for every absent name."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(raw)}


def method_not_allowed(method: str, methods: frozenset[str]) -> Answer:
    """The 405 the router gives, with the methods the endpoint takes in ``Allow``."""
    answer = problem_answer(MethodNotAllowed(f"{method} is not allowed here"))
    answer.headers.append((b"allow", ", ".join(sorted(methods)).encode()))
    return answer


class Front:
    """The hot endpoints by path: the hook under :data:`HOOK_PREFIX`, and the account
    endpoints ``/v1/accounts/{account_id}/<name>`` by ``<name>``."""

    def __init__(self, hook: Endpoint, account_endpoints: Mapping[str, Endpoint]) -> None:
        self.hook = hook
        self.account_endpoints = dict(account_endpoints)

    @property
    def paths(self) -> list[str]:
        """The paths it answers, spelled as the router's routes are."""
        return [
            HOOK_PREFIX,
            HOOK_PREFIX + "/{path}",
            *(ACCOUNTS_PREFIX + "{account_id}/" + name for name in self.account_endpoints),
        ]

    def match(self, path: str) -> tuple[Endpoint, str] | None:
        """The endpoint of the decoded ``path`` and its account id, or None: not ours."""
        if path.startswith(HOOK_PREFIX):
            rest = path[len(HOOK_PREFIX) :]
            return (self.hook, "") if not rest or rest[0] == "/" else None
        if path.startswith(ACCOUNTS_PREFIX):
            account_id, slash, name = path[len(ACCOUNTS_PREFIX) :].partition("/")
            endpoint = self.account_endpoints.get(name) if slash and account_id else None
            if endpoint is not None:
                return endpoint, account_id
        return None

    @staticmethod
    def begin(endpoint: Endpoint, request: Request, reply: Reply) -> None:
        """Answer ``request``; ``reply(answer)`` is called once. Never raises."""
        methods = endpoint.methods
        if methods is not None and request.method not in methods:
            answer = method_not_allowed(request.method, methods)
            access = Access(endpoint.route, request.method, request.raw_path, request.headers,
                            charges=False)  # fmt: skip
            access.done(answer.status, answer.headers)
            reply(answer)
            return
        try:
            endpoint.begin(request, reply)
        except Exception:  # an endpoint answers its own errors: this is a bug
            log.exception("unexpected error on %s %s", request.method, request.raw_path)
            reply(internal_error())

    async def asgi(
        self, endpoint: Endpoint, param: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Answer an ASGI request the front matched, as the protocol answers one."""
        headers = header_map(scope["headers"])
        body, body_error = b"", None
        if endpoint.reads_body:
            body, body_error = await read_asgi_body(receive, headers.get("content-length"))
        request = Request(scope["method"], raw_path(scope), param, headers, body, body_error)
        out: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.begin(endpoint, request, partial(_deliver, out))
        answer = await out
        head = [*answer.headers, (b"content-length", b"%d" % len(answer.body))]
        await send({"type": "http.response.start", "status": answer.status, "headers": head})
        await send({"type": "http.response.body", "body": answer.body})


def _deliver(out: asyncio.Future[Answer], answer: Answer) -> None:
    if not out.done():  # the caller may have been cancelled meanwhile
        out.set_result(answer)


def raw_path(scope: Scope) -> str:
    """The request's path as sent, still percent-encoded, as Latin-1 text. A server that
    gives no ``raw_path`` (it is optional in ASGI) has it encoded again."""
    raw = scope.get("raw_path")
    if raw is None:
        from urllib.parse import quote

        return quote(scope["path"], safe="/!$&'()*+,;=:@-._~")
    return bytes(raw).decode("latin-1")


async def read_asgi_body(
    receive: Receive, declared: str | None
) -> tuple[bytes, QuotagateError | None]:
    """The body, or why not (declared or found above :data:`MAX_BODY_BYTES`): the rest of a
    body too large is received and dropped, as the protocol reads it past."""
    error = declared_length_error(declared)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client left; no answer will reach it
        if error is None:
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                error, chunks = body_too_large(), []
            else:
                chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return (b"", error) if error is not None else (b"".join(chunks), None)
