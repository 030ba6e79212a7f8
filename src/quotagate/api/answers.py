"""An answer as the hot endpoints give it, apart from any HTTP server: status, headers and
body. The carriers (:mod:`quotagate.api.protocol`, and the ASGI entry in
:mod:`quotagate.api.front`) write it the same way: its headers in order, then Content-Length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from quotagate.api.schemas import encode

RawHeaders = list[tuple[bytes, bytes]]

JSON = (b"content-type", b"application/json")


class Answer(NamedTuple):
    """Status, headers (lower-case names, no Content-Length: the carrier adds it) and body."""

    status: int
    headers: RawHeaders
    body: bytes = b""


Reply = Callable[[Answer], None]
"""Called once with a request's answer, now or later from the event loop."""


def json_answer(value: Any, status: int = 200, headers: RawHeaders | None = None) -> Answer:
    """``value`` (a struct of :mod:`quotagate.api.schemas`) encoded as JSON."""
    return Answer(status, [*(headers or ()), JSON], encode(value))
