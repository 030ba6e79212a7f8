"""An account's grants as the scripts keep them (the account hash's ``g`` field, see
``docs/grants.md``), read back into :class:`~quotagate.engine.results.Grant` records in the
order a spend takes from them."""

from __future__ import annotations

from datetime import UTC, datetime

from quotagate.engine.results import Grant

STANDING_PRIORITY = 50
"""The priority of the monthly and purchased grants, and the default of explicit grants (the
scripts' ``STANDING_PRIORITY``)."""

MAX_GRANTS = 100
"""Explicit grants an account may hold at once (the scripts' ``MAX_GRANTS``)."""

_NEVER = float("inf")


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def period_end(period: str) -> datetime | None:
    """The first instant after a "YYYY-MM" period (UTC), None for no period."""
    try:
        year, month = (int(p) for p in period.split("-"))
    except ValueError:
        return None
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def stored_balance(monthly: str | int, purchased: str | int, text: str | None) -> int:
    """The balance the account hash holds, as its outbox rows sum it: monthly, purchased and
    every explicit grant's remainder, also one past its expiry whose ``expire`` row no script
    has written yet (that row will take it out)."""
    total = int(monthly) + int(purchased)
    for item in (text or "").split(";"):
        if item:
            total += int(item.split("|", 2)[1])
    return total


def grant_remainders(text: str | None) -> dict[str, int]:
    """Grant id -> what is left of it, for every explicit grant of a ``g`` field (also one
    past its expiry whose ``expire`` row no script has written yet)."""
    out = {}
    for item in (text or "").split(";"):
        if item:
            gid, remaining, _ = item.split("|", 2)
            out[gid] = int(remaining)
    return out


def explicit_grants(text: str | None, now_ms: int) -> list[Grant]:
    """The explicit grants of a ``g`` field still holding credits at ``now_ms`` (a grant past
    its expiry is gone, whether or not a script has written its expiry yet)."""
    grants = []
    for item in (text or "").split(";"):
        if not item:
            continue
        gid, remaining, expires, priority, source, amount = item.split("|")
        expires_ms = int(expires)
        if expires_ms and expires_ms <= now_ms:
            continue
        grants.append(
            Grant(
                id=gid,
                source=source,
                priority=int(priority),
                amount=int(amount),
                remaining=int(remaining),
                expires_at=_dt(expires_ms) if expires_ms else None,
                created_at=_uuid7_time(gid),
            )
        )
    return grants


def account_grants(
    monthly: int, purchased: int, text: str | None, *, monthly_expires: datetime | None, now_ms: int
) -> tuple[Grant, ...]:
    """Every grant of an account in spend order: the standing ones (monthly, purchased) with
    credits, and the explicit ones (``monthly_expires``: the monthly grant's period end under
    ``renewal = "reset"``, else None)."""
    standing = []
    if monthly > 0:
        standing.append(
            Grant("monthly", "renewal", STANDING_PRIORITY, monthly, monthly, monthly_expires, None)
        )
    if purchased > 0:
        standing.append(
            Grant("purchased", "purchase", STANDING_PRIORITY, purchased, purchased, None, None)
        )
    rank = {"monthly": 0, "purchased": 1}
    every = [*standing, *explicit_grants(text, now_ms)]

    def order(indexed: tuple[int, Grant]) -> tuple[int, float, int, int]:
        i, g = indexed
        expiry = g.expires_at.timestamp() if g.expires_at else _NEVER
        return (g.priority, expiry, rank.get(g.id, 2), i)

    return tuple(g for _, g in sorted(enumerate(every), key=order))


def _uuid7_time(grant_id: str) -> datetime | None:
    """When a grant was made, from its UUIDv7 id (None for an id of another shape)."""
    digits = grant_id.replace("-", "")[:12]
    try:
        return _dt(int(digits, 16))
    except ValueError:
        return None
