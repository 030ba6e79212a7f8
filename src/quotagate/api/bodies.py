"""Reading request bodies: a size cap, then strict decoding into a struct.

A body above the cap is refused (413) as soon as the cap is passed, before it is all read.
Decoding errors become the engine's own error classes, with msgspec's message, which names
the field (``Expected `int`, got `float` - at `$.amount```). A body nested deeper than the
decoder's stack allows is refused like any other malformed JSON; the engine's own checks cap
metadata far below that.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request

from quotagate.api.schemas import AMOUNT_FIELDS
from quotagate.errors import InvalidAmount, PayloadTooLarge, QuotagateError, ValidationError

MAX_BODY_BYTES = 16 * 1024
"""Largest request body. The biggest legitimate one (4 KiB of metadata and a 1000-character
description) fits several times over; anything larger is a mistake or an attack."""

T = TypeVar("T", bound=msgspec.Struct)

_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_FIELD_RE = re.compile(r"at `\$\.([A-Za-z_]+)")
_UNKNOWN_FIELD_RE = re.compile(r"^Object contains unknown field `([A-Za-z_]+)`$")
"""An unknown top-level field: msgspec names it, but not with ``at `$.``."""


def declared_length_error(
    declared: str | None, max_bytes: int = MAX_BODY_BYTES
) -> QuotagateError | None:
    """Why a body of the declared ``Content-Length`` is refused before it is read, if it is."""
    if declared is None:
        return None
    if not declared.isdigit():
        return ValidationError("Content-Length is not a number")
    if int(declared) > max_bytes:
        return body_too_large(max_bytes)
    return None


def body_too_large(max_bytes: int = MAX_BODY_BYTES) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is above {max_bytes} bytes")


async def read_body(request: Request, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    error = declared_length_error(request.headers.get("content-length"), max_bytes)
    if error is not None:
        raise error
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise body_too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def decode(data: bytes, into: type[T], *, empty_ok: bool = False) -> T:
    """``data`` as an ``into``; an empty body counts as ``{}`` when ``empty_ok``."""
    if not data.strip():
        if empty_ok:
            data = b"{}"
        else:
            raise ValidationError("the request needs a JSON object body")
    decoder = _decoders.get(into)
    if decoder is None:
        decoder = _decoders[into] = msgspec.json.Decoder(into)
    try:
        return decoder.decode(data)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _FIELD_RE.search(message)
        unknown = _UNKNOWN_FIELD_RE.match(message)
        field = match.group(1) if match else unknown.group(1) if unknown else None
        if match and field in AMOUNT_FIELDS:
            raise InvalidAmount(message, field=field) from None
        raise ValidationError(message, **({"field": field} if field else {})) from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # msgspec's own bound on nesting, raised before it runs out of stack
        raise ValidationError("the body nests objects or arrays too deeply") from None
