"""The one place where errors become HTTP answers: RFC 9457 ``application/problem+json``.

Every error quotagate raises on purpose carries a stable ``code`` and an ``http_status``
(:mod:`quotagate.errors`, :mod:`quotagate.api.errors`); this module turns one into a problem
document, with the error's extra fields (``required``, ``available``, ``field``...) as extension
members and the headers some statuses need (``Retry-After``, ``WWW-Authenticate``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgspec
from starlette.responses import Response

from quotagate.api.errors import Unauthorized
from quotagate.errors import QuotagateError, RateLimited

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:quotagate:problem:"
"""A problem's ``type`` is this prefix and its code: stable, and no web page is implied."""

_encode = msgspec.json.Encoder().encode

_TITLES = {
    "unauthorized": "Missing or unknown API key",
    "forbidden": "The API key lacks the scope",
    "insufficient_credits": "Insufficient credits",
    "rate_limited": "Rate limited",
    "payload_too_large": "Request body too large",
    "backend_unavailable": "Backend unavailable",
    "ledger_unavailable": "Ledger unavailable; nothing was done",
    "account_not_loaded": "Account not loaded; recovery pending",
    "internal_error": "Internal error",
}


def retry_after_seconds(retry_after_ms: int) -> int:
    """Retry-After is in whole seconds: round up, and never say 0 (it would invite a hammer)."""
    return max(1, math.ceil(retry_after_ms / 1000))


def problem_body(exc: QuotagateError) -> dict[str, Any]:
    status = exc.http_status
    detail = exc.detail if status < 500 or status == 503 else "internal error"
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + exc.code,
        "title": _TITLES.get(exc.code) or exc.code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "code": exc.code,
    }
    if status < 500 or status == 503:
        for name, value in exc.extra.items():
            body.setdefault(name, value)
    return body


def problem_headers(exc: QuotagateError) -> dict[str, str]:
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(retry_after_seconds(exc.retry_after_ms))}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": 'Bearer realm="quotagate"'}
    return {}


def problem_response(
    exc: QuotagateError, status: int | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    """The answer for ``exc``; ``status`` overrides the error's own (the hook's deny statuses)."""
    body = problem_body(exc)
    if status is not None:
        body["status"] = status
    all_headers = problem_headers(exc)
    if headers:
        all_headers.update(headers)
    return Response(
        _encode(body),
        status_code=status or exc.http_status,
        headers=all_headers,
        media_type=PROBLEM_JSON,
    )
