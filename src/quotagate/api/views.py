"""Shaping the engine's and the ledger's records into answers (shared by several endpoints)."""

from __future__ import annotations

import asyncio
import logging

from quotagate import ids
from quotagate.api.gateway import Gateway
from quotagate.api.schemas import (
    AccountOut,
    BucketsOut,
    GrantOut,
    GrantsOut,
    MembershipOut,
    OpenHoldOut,
    PoolPaymentOut,
    TransactionOut,
)
from quotagate.engine.results import Account, Grant, Hold, Membership, PoolPayment
from quotagate.errors import BackendError
from quotagate.ledger import HistoryPage, Transaction

log = logging.getLogger(__name__)

RECENT_TRANSACTIONS = 10
"""How many transactions an account's view carries (what a dashboard shows)."""


def transaction_out(t: Transaction) -> TransactionOut:
    return TransactionOut(
        id=t.id,
        account_id=t.account_id,
        amount=t.amount,
        type=t.type,
        resource=t.resource or None,
        units=t.units,
        description=t.description or None,
        metadata=t.metadata,
        created_at=t.created_at,
        balance_after=t.balance_after,
        pending=t.pending,
        member_id=t.member_id,
    )


async def account_view(gw: Gateway, account_id: str) -> tuple[AccountOut, bool]:
    """The account and its last transactions; True when the ledger could not add them (the
    balance, from Redis, is still right: the view is degraded, not wrong)."""
    ids.check_account_id(account_id)
    a, page = await asyncio.gather(gw.engine.get_account(account_id), _recent(gw, account_id))
    view = AccountOut(
        account_id=a.account_id,
        tier=a.tier,
        status=a.status,
        balance=a.balance,
        reserved=a.reserved,
        available=a.available,
        overdraft_limit=a.overdraft_limit,
        last_reset_at=a.last_reset_at,
        recent_transactions=[transaction_out(t) for t in page.transactions] if page else [],
        buckets=BucketsOut(monthly=a.monthly_credits, purchased=a.purchased_credits),
        holds=[_open_hold(h) for h in a.holds],
        grants=[grant_out(g) for g in a.grants],
        next_expiry=a.next_expiry,
        membership=_membership_out(a.membership),
    )
    return view, page is None


def _membership_out(m: Membership | None) -> MembershipOut | None:
    if m is None:
        return None
    return MembershipOut(m.pool_id, m.member_limit, m.own_credits_first, m.used)


def pool_payment_out(p: PoolPayment | None) -> PoolPaymentOut | None:
    """What a member's pool paid of a charge, as the consume and batch answers say it."""
    if p is None:
        return None
    return PoolPaymentOut(p.pool_id, p.paid, p.pool_balance, p.limit_remaining)


def grant_out(g: Grant) -> GrantOut:
    return GrantOut(g.id, g.source, g.priority, g.amount, g.remaining, g.expires_at, g.created_at)


def grants_out(account: Account) -> GrantsOut:
    """An account's grants in spend order, and when the next of them expires."""
    return GrantsOut([grant_out(g) for g in account.grants], account.next_expiry)


def _open_hold(h: Hold) -> OpenHoldOut:
    # A hold of a plain amount is stored with units 1: it has no resource to count.
    units = h.units if h.resource else None
    return OpenHoldOut(h.hold_id, h.amount, h.expires_at, h.resource or None, units)


async def _recent(gw: Gateway, account_id: str) -> HistoryPage | None:
    try:
        return await gw.ledger.history(gw.engine, account_id, RECENT_TRANSACTIONS, None)
    except BackendError as exc:
        log.debug("history unavailable for %s: %s", account_id, exc.detail)
        return None
