"""The explicit grants recovery gives back to an account: checked, in spend order, and
written as the account hash's ``g`` field (docs/grants.md)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from quotagate.engine import validate
from quotagate.engine.results import GRANT_SOURCES, STANDING_GRANTS, Grant
from quotagate.errors import ValidationError

_NEVER_MS = 2**63
"""Sorts after every expiry: a grant that never expires is spent last among its priority."""
_SEPARATORS = ("|", ";")
"""What separates the fields of a grant and the grants in ``g``."""
MAX_GRANT_ID_CHARS = 64
"""As every id the scripts take (``MAX_ID_LENGTH`` in lua/prelude.lua)."""


def _ms(when: datetime | None) -> int:
    return 0 if when is None else int(when.timestamp() * 1000)


def spend_order(grants: Sequence[Grant]) -> list[Grant]:
    """The grants in the order a spend takes from them: priority (lowest first), then the
    soonest expiry (never last), then the oldest (ids are UUIDv7: they sort by creation)."""
    return sorted(
        grants,
        key=lambda g: (
            g.priority, _ms(g.expires_at) if g.expires_at else _NEVER_MS, _ms(g.created_at), g.id
        ),
    )  # fmt: skip


def check_grant(grant: Grant) -> None:
    """ValidationError unless the grant can be written into ``g`` and still be live."""
    if not 0 < len(grant.id) <= MAX_GRANT_ID_CHARS or any(s in grant.id for s in _SEPARATORS):
        raise ValidationError(
            f"grant id {grant.id!r} must be 1..{MAX_GRANT_ID_CHARS} characters without | or ;",
            field="grants",
        )
    if grant.id in STANDING_GRANTS:
        raise ValidationError(
            f"{grant.id!r} is a standing grant, not an explicit one", field="grants"
        )
    if grant.source not in GRANT_SOURCES:
        raise ValidationError(f"grant {grant.id}: unknown source {grant.source!r}", field="grants")
    if not 0 <= grant.priority <= 100:
        raise ValidationError(f"grant {grant.id}: priority must be 0..100", field="grants")
    validate.amount(grant.amount, "grant amount")
    validate.amount(grant.remaining, "grant remaining")
    if grant.expires_at is not None and _ms(grant.expires_at) <= 0:
        raise ValidationError(f"grant {grant.id}: expiry before 1970", field="grants")


def grants_field(grants: Sequence[Grant]) -> str:
    """The ``g`` field of these grants ("" for none). Raises ValidationError."""
    for grant in grants:
        check_grant(grant)
    if len({g.id for g in grants}) != len(grants):
        raise ValidationError("a grant is given twice", field="grants")
    return ";".join(
        f"{g.id}|{g.remaining}|{_ms(g.expires_at)}|{g.priority}|{g.source}|{g.amount}"
        for g in spend_order(grants)
    )
