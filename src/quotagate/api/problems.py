"""The one place where an error becomes an HTTP answer: an RFC 9457 ``application/problem+json``
document, its status and its headers, for every endpoint, the hook and the fast path alike.

Every error quotagate raises on purpose carries a stable ``code`` and an ``http_status``
(:mod:`quotagate.errors`); :func:`problem_answer` turns one into
its answer, with the error's extra fields (``required``, ``available``, ``field``...) as
extension members and the headers some statuses need (``Retry-After``, ``WWW-Authenticate``).
The hook answers some errors otherwise (a proxy reads its status, not its body):
:data:`HOOK_OVERRIDES` says how, as data, and :func:`hook_problem` applies it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.responses import Response

from quotagate.api.answers import Answer
from quotagate.config import Authz
from quotagate.errors import (
    AccountNotFound,
    BackendError,
    InsufficientCredits,
    InvalidPath,
    MissingAccountHeader,
    QuotagateError,
    RateLimited,
    Unauthorized,
)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:quotagate:problem:"
"""A problem's ``type`` is this prefix and its code: stable, and no web page is implied."""

_encode = msgspec.json.Encoder().encode
_CONTENT_TYPE = (b"content-type", PROBLEM_JSON.encode())

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
_TITLES_BY_CLASS: dict[type[QuotagateError], str] = {
    MissingAccountHeader: "Missing X-Account-Id header",
}
"""Titles of errors that share a code with others but not what went wrong."""


def retry_after_seconds(retry_after_ms: int) -> int:
    """Retry-After is in whole seconds: round up, and never say 0 (it would invite a hammer)."""
    return max(1, math.ceil(retry_after_ms / 1000))


def _title(exc: QuotagateError) -> str:
    return (
        _TITLES_BY_CLASS.get(type(exc))
        or _TITLES.get(exc.code)
        or exc.code.replace("_", " ").capitalize()
    )


def problem_body(exc: QuotagateError) -> dict[str, Any]:
    status = exc.http_status
    shown = status < 500 or status == 503
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + exc.code,
        "title": _title(exc),
        "status": status,
        "detail": exc.detail if shown else "internal error",
        "code": exc.code,
    }
    if shown:
        for name, value in exc.extra.items():
            body.setdefault(name, value)
    return body


def problem_headers(exc: QuotagateError) -> dict[str, str]:
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(retry_after_seconds(exc.retry_after_ms))}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": 'Bearer realm="quotagate"'}
    return {}


def problem_answer(
    exc: QuotagateError, status: int | None = None, headers: Mapping[str, str] | None = None
) -> Answer:
    """The answer for ``exc``; ``status`` overrides the error's own, ``headers`` add to (or
    replace) the ones its status needs."""
    body = problem_body(exc)
    if status is not None:
        body["status"] = status
    all_headers = problem_headers(exc)
    if headers:
        all_headers.update(headers)
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in all_headers.items()]
    raw.append(_CONTENT_TYPE)
    return Answer(status or exc.http_status, raw, _encode(body))


INTERNAL_ERROR = QuotagateError("internal error")


def internal_error() -> Answer:
    """The answer to an error nobody raised on purpose (it is logged where it is caught)."""
    return problem_answer(INTERNAL_ERROR)


def problem_response(
    exc: QuotagateError, status: int | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    """:func:`problem_answer` as a Starlette response, for the routes served through ASGI."""
    answer = problem_answer(exc, status, headers)
    response = Response(answer.body, status_code=answer.status, media_type=PROBLEM_JSON)
    response.raw_headers[:0] = [h for h in answer.headers if h != _CONTENT_TYPE]
    return response


# -- the hook ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HookOverride:
    """How the hook answers errors of class ``error`` (and its subclasses) otherwise than the
    API: ``status`` a number or the name of an ``[authz]`` setting (None: the error's own),
    ``headers`` added to the answer, from the error."""

    error: type[QuotagateError]
    status: int | str | None = None
    headers: Callable[[Any], dict[str, str]] | None = None

    def status_for(self, exc: QuotagateError, authz: Authz) -> int:
        if self.status is None:
            return exc.http_status
        if isinstance(self.status, int):
            return self.status
        return int(getattr(authz, self.status))


HOOK_OVERRIDES: tuple[HookOverride, ...] = (
    HookOverride(
        InsufficientCredits,
        status="deny_status",
        headers=lambda e: {"X-Quota-Remaining": str(e.available)},
    ),
    HookOverride(RateLimited, status="rate_limited_status"),
    HookOverride(InvalidPath, status="invalid_path_status"),
    # An unknown account may not pass; a 404 would read to the proxy as "no such page".
    HookOverride(AccountNotFound, status=403),
    # Redis down or slow: the proxy may ask again in a second.
    HookOverride(BackendError, headers=lambda e: {"Retry-After": "1"}),
)
"""The hook's answers that differ from the API's, first match wins."""


def hook_problem(exc: QuotagateError, authz: Authz) -> tuple[str, Answer]:
    """The hook's answer to ``exc`` and its reason (``X-Quota-Reason``: the error's ``reason``
    when it gives one, else its code)."""
    reason = str(exc.extra.pop("reason", exc.code))
    headers = {"X-Quota-Reason": reason}
    status = exc.http_status
    for override in HOOK_OVERRIDES:
        if isinstance(exc, override.error):
            status = override.status_for(exc, authz)
            if override.headers is not None:
                headers.update(override.headers(exc))
            break
    return reason, problem_answer(exc, status, headers)
