"""Checks on the engine's inputs, done in Python before any script runs.

The scripts check their arguments again (they are the last line), but a Python check gives
the caller a precise message and saves the round trip.
"""

from __future__ import annotations

import base64
import enum
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from quotagate.config import MAX_AMOUNT, Config
from quotagate.errors import InvalidAmount, UnknownResource, ValidationError


class Keep(enum.Enum):
    """A setting left as it is (where None means something: no member limit)."""

    KEEP = "keep"


KEEP = Keep.KEEP

MAX_DESCRIPTION_CHARS = 1000
MAX_METADATA_BYTES = 4096
"""Metadata travels in the outbox and the ledger; a cap keeps one request from bloating both."""
MAX_METADATA_DEPTH = 32
"""Deepest nesting of objects and arrays in metadata, the top object being level 1. Every
reader of metadata (JSON decoders, msgspec, PostgreSQL's jsonb functions) walks it
recursively; a cap far below their stack limits keeps each of them from failing on it."""
MAX_METADATA_VALUES = MAX_METADATA_BYTES
"""Most keys and values metadata may hold: each takes at least one byte of JSON, so more
cannot fit in MAX_METADATA_BYTES. The walk stops there, before it has seen all of a huge
object."""

TRANSACTION_TYPES = ("earn", "spend", "refund", "grant", "expire", "adjust")
CREDIT_TYPES = ("grant", "earn", "refund", "adjust")

_encoder = msgspec.json.Encoder(order="sorted")


def amount(value: Any, name: str = "amount", *, signed: bool = False) -> int:
    """An integer from 1 to 10^12 (or, when signed, a non-zero one within ±10^12)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and signed:
        ok = value != 0 and -MAX_AMOUNT <= value <= MAX_AMOUNT
    elif ok:
        ok = 1 <= value <= MAX_AMOUNT
    if not ok:
        rng = "a non-zero integer from -10^12 to 10^12" if signed else "an integer from 1 to 10^12"
        raise InvalidAmount(f"{name} must be {rng}", field=name)
    return int(value)


def limit(value: Any, name: str) -> int:
    """An integer from 0 to 10^12 (limits such as an overdraft)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_AMOUNT:
        raise InvalidAmount(f"{name} must be an integer from 0 to 10^12", field=name)
    return int(value)


def cost(config: Config, resource: Any, units: Any) -> int:
    if not isinstance(resource, str) or resource not in config.resources:
        raise UnknownResource(f"unknown resource {resource!r}", field="resource")
    n = amount(units, "units")
    total = config.resources[resource] * n
    if total > MAX_AMOUNT:
        raise InvalidAmount("resource cost times units is above 10^12", field="units")
    return total


def unstorable(text: str) -> str | None:
    """Why PostgreSQL's text and jsonb cannot hold ``text``, or None when they can.

    Outside these two, a UTF-8 database stores any Unicode text: NUL (U+0000) is refused by
    both types (PostgreSQL strings end at NUL), and a lone surrogate (U+D800 to U+DFFF, which
    Python strings may hold) has no UTF-8 form at all.
    """
    if "\x00" in text:
        return "contains a NUL character (U+0000)"
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return "contains a lone surrogate (U+D800 to U+DFFF), which is not Unicode text"
    return None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def grant_terms(source: Any, priority: Any, expires_at: Any) -> tuple[str, int, int | None]:
    """A grant's source, priority and expiry (ms since the epoch, None for never), checked."""
    from quotagate.engine.results import GRANT_SOURCES

    if source not in GRANT_SOURCES:
        raise ValidationError(f"source must be one of {', '.join(GRANT_SOURCES)}", field="source")
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 100:
        raise ValidationError("priority must be an integer from 0 to 100", field="priority")
    if expires_at is None:
        return source, priority, None
    if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
        raise ValidationError("expires_at must be a time with a time zone", field="expires_at")
    ms = (expires_at - _EPOCH) // timedelta(milliseconds=1)  # exact: no float rounding
    if not 0 < ms < 10**14:
        raise ValidationError("expires_at is out of range", field="expires_at")
    return source, priority, ms


def grant_lifetime_ms(value: Any) -> int:
    """A relative grant expiry (a timedelta) in whole milliseconds, at least 1."""
    if not isinstance(value, timedelta):
        raise ValidationError("expires_in must be a duration", field="expires_in")
    ms = value // timedelta(milliseconds=1)
    if not 1 <= ms <= 10**13:
        raise ValidationError("expires_in must be from 1 ms to about 300 years", field="expires_in")
    return ms


def description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION_CHARS:
        raise ValidationError(
            f"description must be a string of at most {MAX_DESCRIPTION_CHARS} characters",
            field="description",
        )
    problem = unstorable(value)
    if problem:
        raise ValidationError(f"description {problem}", field="description")
    return value


def metadata(value: Any) -> str:
    """Metadata as JSON text ("" for none): a JSON object of at most 4 KiB and 32 levels,
    whose keys and strings PostgreSQL can store."""
    if value is None:
        return ""
    if not isinstance(value, dict):
        raise ValidationError("metadata must be a JSON object", field="metadata")
    _check_metadata_tree(value)
    try:
        text = _encoder.encode(value)
    except (TypeError, msgspec.EncodeError):
        raise ValidationError("metadata must be JSON-serialisable", field="metadata") from None
    if len(text) > MAX_METADATA_BYTES:
        raise ValidationError(
            f"metadata must be at most {MAX_METADATA_BYTES} bytes as JSON", field="metadata"
        )
    return text.decode()


FINGERPRINT_CHARS = 16
"""Characters of a request fingerprint: 96 bits of SHA-256 in URL-safe base64. The scripts
keep it in every idempotency record, so each character is a byte of Redis per record."""


_JSON_LEAVES = (str, int, float, bool, type(None))


def _check_metadata_tree(top: dict[Any, Any]) -> None:
    """Walk metadata without recursion (depth first, by an explicit stack), refusing what is
    too deep, too large, not JSON, or not storable text, with the path to the culprit."""
    stack: list[tuple[Any, int, str]] = [(top, 1, "metadata")]
    seen = 0
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            items: list[tuple[str, Any]] = []
            for key, child in node.items():
                if not isinstance(key, str):
                    raise _bad_metadata(f"{path} has a key that is not a string: {key!r}")
                _check_metadata_text(key, f"{path} key {key!r}")
                items.append((f"{path}[{key!r}]", child))
        elif isinstance(node, list | tuple):
            items = [(f"{path}[{i}]", child) for i, child in enumerate(node)]
        else:
            continue
        if depth > MAX_METADATA_DEPTH:
            raise _bad_metadata(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels")
        seen += len(items)
        if seen > MAX_METADATA_VALUES:
            raise _bad_metadata(f"metadata must be at most {MAX_METADATA_BYTES} bytes as JSON")
        for child_path, child in items:
            if isinstance(child, str):
                _check_metadata_text(child, child_path)
            elif isinstance(child, dict | list | tuple):
                stack.append((child, depth + 1, child_path))
            elif not isinstance(child, _JSON_LEAVES):
                raise _bad_metadata(f"{child_path} is not a JSON value ({type(child).__name__})")


def _check_metadata_text(text: str, where: str) -> None:
    problem = unstorable(text)
    if problem:
        raise _bad_metadata(f"{where[:200]} {problem}")


def _bad_metadata(message: str) -> ValidationError:
    return ValidationError(message, field="metadata")


def fingerprint(*parts: Any) -> str:
    """A digest of a request's meaning, to tell a replay from a different request."""
    digest = hashlib.sha256(_encoder.encode(parts)).digest()
    return base64.urlsafe_b64encode(digest)[:FINGERPRINT_CHARS].decode()
