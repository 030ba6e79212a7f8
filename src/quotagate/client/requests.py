"""What each call sends and what it decodes into: shared by the sync and async clients."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import msgspec

from quotagate.api import schemas as s
from quotagate.client.errors import error_from_document
from quotagate.engine.charge_list import Charge
from quotagate.engine.validate import KEEP, Keep
from quotagate.errors import QuotagateError

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Call(Generic[R]):
    method: str
    path: str
    into: type[R]
    body: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hook: bool = False
    """Sends the key as X-Quotagate-Key (the proxy's key), as the hook endpoints want."""


def _acct(account_id: str) -> str:
    return f"/v1/accounts/{quote(account_id, safe='')}"


def _clean(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _idem(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key else {}


@dataclass(frozen=True, slots=True)
class MemberSettings:
    """A pool member's settings as a call gives them: ``KEEP`` and None leave them as they are,
    except that a ``member_limit`` of None lifts the limit."""

    member_limit: int | Keep | None = KEEP
    own_credits_first: bool | None = None


def upsert_account(
    account_id: str,
    tier: str | None,
    status: str | None,
    overdraft_limit: int | None,
    idempotency_key: str | None,
    member: MemberSettings | None = None,
) -> Call[s.AccountWritten]:
    body = _clean({"tier": tier, "status": status, "overdraft_limit": overdraft_limit})
    if member is not None:
        if member.member_limit is not KEEP:
            body["member_limit"] = member.member_limit  # None (JSON null) lifts the limit
        if member.own_credits_first is not None:
            body["own_credits_first"] = member.own_credits_first
    return Call("PUT", _acct(account_id), s.AccountWritten, body, headers=_idem(idempotency_key))


def get_account(account_id: str) -> Call[s.AccountOut]:
    return Call("GET", _acct(account_id), s.AccountOut)


def credit(
    account_id: str,
    amount: int,
    type: str,
    description: str | None,
    metadata: dict[str, Any] | None,
    idempotency_key: str | None,
    refund_of: str | None = None,
) -> Call[s.CreditOut]:
    body = _clean(
        {"amount": amount, "type": type, "refund_of": refund_of, "description": description,
         "metadata": metadata}
    )  # fmt: skip
    path = f"{_acct(account_id)}/credits"
    return Call("POST", path, s.CreditOut, body, headers=_idem(idempotency_key))


@dataclass(frozen=True, slots=True)
class GrantTerms:
    """A grant's terms as a call gives them; None leaves a term to the gateway's default
    (source "promotion", priority 50, never expires)."""

    source: str | None = None
    priority: int | None = None
    expires_at: datetime | None = None
    expires_in_seconds: int | None = None


def grant(
    account_id: str,
    amount: int,
    terms: GrantTerms,
    description: str | None,
    metadata: dict[str, Any] | None,
    idempotency_key: str | None,
) -> Call[s.GrantMadeOut]:
    body = _clean(
        {"amount": amount, "source": terms.source, "priority": terms.priority,
         "expires_at": terms.expires_at.isoformat() if terms.expires_at else None,
         "expires_in_seconds": terms.expires_in_seconds, "description": description,
         "metadata": metadata}
    )  # fmt: skip
    path = f"{_acct(account_id)}/grants"
    return Call("POST", path, s.GrantMadeOut, body, headers=_idem(idempotency_key))


def grants(account_id: str) -> Call[s.GrantsOut]:
    return Call("GET", f"{_acct(account_id)}/grants", s.GrantsOut)


def void_grant(
    account_id: str, grant_id: str, description: str | None, idempotency_key: str | None
) -> Call[s.VoidOut]:
    path = f"{_acct(account_id)}/grants/{quote(grant_id, safe='')}/void"
    body = _clean({"description": description})
    return Call("POST", path, s.VoidOut, body, headers=_idem(idempotency_key))


def check(account_id: str, resource: str, units: int) -> Call[s.CheckOut]:
    body = {"resource": resource, "units": units}
    return Call("POST", f"{_acct(account_id)}/check", s.CheckOut, body)


def consume(
    account_id: str,
    resource: str,
    units: int,
    description: str | None,
    metadata: dict[str, Any] | None,
    idempotency_key: str | None,
) -> Call[s.ChargeOut]:
    body = _clean(
        {"resource": resource, "units": units, "description": description, "metadata": metadata}
    )
    path = f"{_acct(account_id)}/consume"
    return Call("POST", path, s.ChargeOut, body, headers=_idem(idempotency_key))


def consume_many(charges: Sequence[Charge]) -> Call[s.ChargesOut]:
    items = [_charge_item(c) for c in charges]
    return Call("POST", "/v1/charges", s.ChargesOut, {"charges": items})


def _charge_item(c: Charge) -> dict[str, Any]:
    return _clean(
        {"account_id": c.account_id, "resource": c.resource, "units": c.units,
         "description": c.description, "metadata": c.metadata,
         "idempotency_key": c.idempotency_key}
    )  # fmt: skip


def outcomes(answer: s.ChargesOut) -> list[s.ChargeOut | QuotagateError]:
    """Each result of a batch as consume() would give it: the charge, or its typed error."""
    return [_outcome(result) for result in answer.results]


def _outcome(r: s.ChargeItemOut) -> s.ChargeOut | QuotagateError:
    if r.problem is None and r.transaction_id and r.cost is not None and r.remaining is not None:
        return s.ChargeOut(r.transaction_id, r.cost, r.remaining, r.shadow)
    return error_from_document(r.status, r.problem or {})


def hold(
    account_id: str,
    resource: str | None,
    units: int | None,
    amount: int | None,
    ttl_seconds: int | None,
    idempotency_key: str | None,
) -> Call[s.HoldOut]:
    body = _clean(
        {"resource": resource, "units": units, "amount": amount, "ttl_seconds": ttl_seconds}
    )
    path = f"{_acct(account_id)}/holds"
    return Call("POST", path, s.HoldOut, body, headers=_idem(idempotency_key))


def capture(
    account_id: str, hold_id: str, amount: int | None, idempotency_key: str | None
) -> Call[s.ChargeOut]:
    path = f"{_acct(account_id)}/holds/{quote(hold_id, safe='')}/capture"
    body = _clean({"amount": amount})
    return Call("POST", path, s.ChargeOut, body, headers=_idem(idempotency_key))


def release(account_id: str, hold_id: str, idempotency_key: str | None) -> Call[s.ReleaseOut]:
    path = f"{_acct(account_id)}/holds/{quote(hold_id, safe='')}/release"
    return Call("POST", path, s.ReleaseOut, {}, headers=_idem(idempotency_key))


def settle(
    hold_id: str, amount: int | None, units: int | None, idempotency_key: str | None
) -> Call[s.SettleOut]:
    path = f"/v1/holds/{quote(hold_id, safe='')}/settle"
    body = _clean({"amount": amount, "units": units})
    return Call("POST", path, s.SettleOut, body, headers=_idem(idempotency_key))


def transactions(account_id: str, limit: int, before: str | None) -> Call[s.TransactionsOut]:
    params = _clean({"limit": limit, "before": before})
    return Call("GET", f"{_acct(account_id)}/transactions", s.TransactionsOut, params=params)


def resources() -> Call[s.ResourcesOut]:
    return Call("GET", "/v1/resources", s.ResourcesOut)


def me(account_id: str) -> Call[s.AccountOut]:
    return Call("GET", "/v1/me", s.AccountOut, headers={"X-Account-Id": account_id}, hook=True)


_encoder = msgspec.json.Encoder()


def encode_body(body: dict[str, Any] | None) -> bytes | None:
    return None if body is None else _encoder.encode(body)
