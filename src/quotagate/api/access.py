"""The access line: one log record per request the gateway answers, on the logger
``quotagate.access`` at level INFO, and the request id every answer carries.

Fields (docs/logs.md): ``request_id``, ``method``, ``path`` (as sent, percent-encoded, without
the query string, which may carry a client's token), ``route`` (its name in the request
metrics), ``status``, ``account``, ``decision`` and ``cost`` (for the hook and the charges:
``allowed``, ``denied`` or ``error``, and the credits charged or set aside), ``latency_ms``
(from the request's arrival in the gateway to its answer). No header but ``X-Request-Id`` is
read: keys and tokens never reach the line.

The request id is the caller's ``X-Request-Id`` when it is 1 to 128 printable ASCII
characters (a proxy's own id, which the hook also takes as the charge's idempotency key),
else one made here; every answer carries it back in ``X-Request-Id``.

The hook is one call per proxied request: the line is written once, at the answer, from one
:class:`Access` made as the request arrives; when the level leaves INFO out, no record is made.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import time
from collections.abc import Mapping

from starlette.types import Scope

from quotagate.api.answers import RawHeaders
from quotagate.logs import FIELDS_ATTRIBUTE

ACCESS_LOGGER = logging.getLogger("quotagate.access")
REQUEST_ID_HEADER = b"x-request-id"

_CALLERS_ID = re.compile(r"[\x21-\x7e]{1,128}")
"""A caller's X-Request-Id taken as the request's: printable ASCII, no spaces, 128 at most."""


class _RequestIds:
    """Ids for requests that came without one: this process's random part, then a count.
    Unique across processes and restarts, cheap enough for every hook request (a UUID costs
    several times more); not secret, and not a transaction id."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked child counts on its own

    def _reset(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.count = itertools.count(1)

    def new(self) -> str:
        return f"{self.prefix}-{next(self.count):x}"


_REQUEST_IDS = _RequestIds()


def request_id_of(caller_id: str | None) -> str:
    """The request's id: the caller's when it is one we can echo and log as it is, else new."""
    if caller_id is not None and _CALLERS_ID.fullmatch(caller_id):
        return caller_id
    return _REQUEST_IDS.new()


def decision_of(status: int) -> str:
    """A charge's decision from its answer's status: 2xx allowed, 4xx denied, 5xx error."""
    return "allowed" if status < 400 else "denied" if status < 500 else "error"


_START = time.time()
_TEMPLATE = {
    key: value
    for key, value in logging.LogRecord(
        ACCESS_LOGGER.name, logging.INFO, __file__, 0, "request", (), None
    ).__dict__.items()
    if key not in ("created", "msecs", "relativeCreated", "process")
}
"""What every access record has the same: its logger, level, message, source."""


class AccessRecord(logging.LogRecord):
    """An access line's record, made without :class:`logging.LogRecord`'s own ``__init__``,
    which works out the same source file, thread and process names for every line, a good
    part of the line's cost on the hook. The attributes are the same, in ``__dict__`` as
    there (where %-style formatters read them), and the line's fields with them."""

    def __init__(self, fields: Mapping[str, object]) -> None:
        attributes = self.__dict__
        attributes.update(_TEMPLATE)
        now = time.time()
        attributes["created"] = now
        attributes["msecs"] = (now - int(now)) * 1000
        attributes["relativeCreated"] = (now - _START) * 1000
        attributes["process"] = os.getpid()
        attributes.update(fields)
        attributes[FIELDS_ATTRIBUTE] = fields


class Access:
    """One request's access line, filled in as it is answered."""

    __slots__ = ("account", "charges", "cost", "decision", "headers", "method", "path", "route",
                 "started")  # fmt: skip

    def __init__(
        self,
        route: str | None,
        method: str,
        path: str,
        headers: Mapping[str, str],
        *,
        charges: bool,
    ) -> None:
        self.started = time.perf_counter()
        self.route = route
        """None for a request no endpoint took (no such path)."""
        self.method = method
        self.path = path
        self.headers = headers
        """The request's headers by lower-case name; only X-Request-Id is read."""
        self.charges = charges
        """Whether the line carries a decision (the hook, and the endpoints that charge)."""
        self.account: str | None = None
        self.cost: int | None = None
        self.decision: str | None = None
        """Set when the status does not tell it (a check answered 200 with allowed false)."""

    def done(self, status: int, answer_headers: RawHeaders) -> None:
        """The request is answered with ``status``: add its id to ``answer_headers`` (the
        answer's own list, made for this request) and write the line."""
        request_id = request_id_of(self.headers.get("x-request-id"))
        answer_headers.append((REQUEST_ID_HEADER, request_id.encode()))
        if ACCESS_LOGGER.isEnabledFor(logging.INFO):
            self._write(request_id, status)

    def _write(self, request_id: str, status: int) -> None:
        latency_ms = round((time.perf_counter() - self.started) * 1000, 3)
        decision = None
        if self.charges:
            decision = self.decision or decision_of(status)
        fields = {
            "request_id": request_id, "method": self.method, "path": self.path,
            "route": self.route, "status": status, "account": self.account,
            "decision": decision, "cost": self.cost, "latency_ms": latency_ms,
        }  # fmt: skip
        ACCESS_LOGGER.handle(AccessRecord(fields))


ASGI_SCOPE_KEY = "quotagate.access"
"""Where a request served through ASGI keeps its :class:`Access`, for its endpoint to fill in."""


def access_of_scope(scope: Scope) -> Access | None:
    """The :class:`Access` of a request served through ASGI (None outside the gateway app)."""
    access = scope.get(ASGI_SCOPE_KEY)
    return access if isinstance(access, Access) else None


def caller_request_id(raw_headers: RawHeaders) -> dict[str, str]:
    """The caller's X-Request-Id of an ASGI request, as the only header :class:`Access` reads."""
    for name, value in raw_headers:
        if name == REQUEST_ID_HEADER:
            return {"x-request-id": value.decode("latin-1")}
    return {}
