"""Checks on the engine's inputs, done in Python before any script runs.

The scripts check their arguments again (they are the last line), but a Python check gives
the caller a precise message and saves the round trip.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import msgspec

from quotagate.config import MAX_AMOUNT, Config
from quotagate.errors import InvalidAmount, UnknownResource, ValidationError

MAX_DESCRIPTION_CHARS = 1000
MAX_METADATA_BYTES = 4096
"""Metadata travels in the outbox and the ledger; a cap keeps one request from bloating both."""

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


def description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION_CHARS:
        raise ValidationError(
            f"description must be a string of at most {MAX_DESCRIPTION_CHARS} characters",
            field="description",
        )
    return value


def metadata(value: Any) -> str:
    """Metadata as JSON text ("" for none): a JSON object of at most 4 KiB."""
    if value is None:
        return ""
    if not isinstance(value, dict):
        raise ValidationError("metadata must be a JSON object", field="metadata")
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


def fingerprint(*parts: Any) -> str:
    """A digest of a request's meaning, to tell a replay from a different request."""
    digest = hashlib.sha256(_encoder.encode(parts)).digest()
    return base64.urlsafe_b64encode(digest)[:FINGERPRINT_CHARS].decode()
