"""The blocking client."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx

from quotagate.api import schemas as s
from quotagate.client import requests as rq
from quotagate.client.base import (
    DEFAULT_TIMEOUT_SECONDS,
    default_headers,
    request_args,
    result,
    unreachable,
)
from quotagate.engine.charge_list import Charge
from quotagate.engine.validate import KEEP, Keep
from quotagate.errors import QuotagateError

R = TypeVar("R")


class QuotagateClient:
    """Calls a quotagate gateway. Errors are the typed ones of :mod:`quotagate.errors`.

    ``QuotagateClient("http://127.0.0.1:8080", api_key)``; use it as a context manager or
    call :meth:`close`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_key = api_key
        self.http = httpx.Client(
            base_url=base_url,
            headers=default_headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> QuotagateClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _send(self, call: rq.Call[R]) -> R:
        try:
            response = self.http.request(**request_args(call, self.api_key))
        except httpx.TransportError as exc:
            raise unreachable(exc) from exc
        return result(call, response)

    def upsert_account(
        self,
        account_id: str,
        *,
        tier: str | None = None,
        status: str | None = None,
        overdraft_limit: int | None = None,
        member_limit: int | Keep | None = KEEP,
        own_credits_first: bool | None = None,
        idempotency_key: str | None = None,
    ) -> s.AccountWritten:
        """Create or change an account. A pool's member (``<pool>~<name>``) also takes
        ``member_limit`` (None: no limit; left out: as it was) and ``own_credits_first``."""
        member = rq.MemberSettings(member_limit, own_credits_first)
        return self._send(
            rq.upsert_account(account_id, tier, status, overdraft_limit, idempotency_key, member)
        )

    def get_account(self, account_id: str) -> s.AccountOut:
        return self._send(rq.get_account(account_id))

    def credit(
        self,
        account_id: str,
        amount: int,
        type: str = "grant",
        *,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        refund_of: str | None = None,
    ) -> s.CreditOut:
        """Add credits. A refund (``type="refund"``, allowed to service keys) names the spend
        it returns in ``refund_of``: all refunds of one spend return at most what it charged."""
        return self._send(
            rq.credit(account_id, amount, type, description, metadata, idempotency_key, refund_of)
        )

    def grant(
        self,
        account_id: str,
        amount: int,
        *,
        source: str | None = None,
        priority: int | None = None,
        expires_at: datetime | None = None,
        expires_in_seconds: int | None = None,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> s.GrantMadeOut:
        """Give the account an explicit grant (admin keys): ``amount`` credits from
        ``source``, spent by ``priority`` (0..100, lower first), whose rest expires at
        ``expires_at`` or ``expires_in_seconds`` from now (neither: never)."""
        terms = rq.GrantTerms(source, priority, expires_at, expires_in_seconds)
        return self._send(
            rq.grant(account_id, amount, terms, description, metadata, idempotency_key)
        )

    def grants(self, account_id: str) -> s.GrantsOut:
        """The account's grants in spend order, and when the next of them expires."""
        return self._send(rq.grants(account_id))

    def void_grant(
        self,
        account_id: str,
        grant_id: str,
        *,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> s.VoidOut:
        """Take back what is left of an explicit grant (admin keys); GrantNotFound when the
        account holds no credits under that id."""
        return self._send(rq.void_grant(account_id, grant_id, description, idempotency_key))

    def check(self, account_id: str, resource: str, units: int = 1) -> s.CheckOut:
        return self._send(rq.check(account_id, resource, units))

    def consume(
        self,
        account_id: str,
        resource: str,
        units: int = 1,
        *,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> s.ChargeOut:
        return self._send(
            rq.consume(account_id, resource, units, description, metadata, idempotency_key)
        )

    def consume_many(self, charges: Sequence[Charge]) -> list[s.ChargeOut | QuotagateError]:
        """Charge many resources, for any accounts, in one request (``POST /v1/charges``).

        One outcome per charge, in order: what :meth:`consume` would return, or the error it
        would raise, as a value. Charges of one account run in their order; each stands or
        falls alone. A request the gateway refuses as a whole (too many charges, a body too
        large) raises, and charged nothing."""
        return rq.outcomes(self._send(rq.consume_many(charges)))

    def hold(
        self,
        account_id: str,
        *,
        resource: str | None = None,
        units: int | None = None,
        amount: int | None = None,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> s.HoldOut:
        return self._send(
            rq.hold(account_id, resource, units, amount, ttl_seconds, idempotency_key)
        )

    def capture(
        self,
        account_id: str,
        hold_id: str,
        amount: int | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> s.ChargeOut:
        return self._send(rq.capture(account_id, hold_id, amount, idempotency_key))

    def release(
        self, account_id: str, hold_id: str, *, idempotency_key: str | None = None
    ) -> s.ReleaseOut:
        return self._send(rq.release(account_id, hold_id, idempotency_key))

    def settle(
        self,
        hold_id: str,
        *,
        amount: int | None = None,
        units: int | None = None,
        idempotency_key: str | None = None,
    ) -> s.SettleOut:
        """Settle a reservation (``hold_id`` from the hook's X-Quota-Hold-Id) with its actual
        cost: ``amount`` credits or ``units`` of its resource; 0 releases it."""
        return self._send(rq.settle(hold_id, amount, units, idempotency_key))

    def transactions(
        self, account_id: str, *, limit: int = 50, before: str | None = None
    ) -> s.TransactionsOut:
        return self._send(rq.transactions(account_id, limit, before))

    def resources(self) -> dict[str, int]:
        return self._send(rq.resources()).resources

    def me(self, account_id: str) -> s.AccountOut:
        """The account as an end user sees it through the proxy (needs a hook key)."""
        return self._send(rq.me(account_id))
