"""What the sync and async clients share: headers, decoding, and turning answers into errors."""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
import msgspec

from quotagate import __version__
from quotagate.client.errors import error_from_problem
from quotagate.client.requests import Call, encode_body
from quotagate.errors import BackendUnavailable

R = TypeVar("R")

DEFAULT_TIMEOUT_SECONDS = 5.0


def default_headers(api_key: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {api_key}",
        "User-Agent": f"quotagate-client/{__version__}",
    }


def request_args(call: Call[Any], api_key: str) -> dict[str, Any]:
    headers = dict(call.headers)
    body = encode_body(call.body)
    if body is not None:
        headers["Content-Type"] = "application/json"
    if call.hook:
        headers["X-Quotagate-Key"] = api_key
    return {
        "method": call.method,
        "url": call.path,
        "content": body,
        "params": call.params,
        "headers": headers,
    }


def result(call: Call[R], response: httpx.Response) -> R:
    if response.status_code >= 400:
        raise error_from_problem(response.status_code, response.content, response.headers)
    return msgspec.json.decode(response.content, type=call.into)


def unreachable(exc: httpx.TransportError) -> BackendUnavailable:
    return BackendUnavailable(f"quotagate did not answer: {type(exc).__name__}: {exc}")
