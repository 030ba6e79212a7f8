"""The typed Python client, sync and async, against a live gateway."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from tests.support.gateway import GatewayServer, new_account_id
from tests.support.servers import free_port

from quotagate import errors, ids
from quotagate.api.schemas import ChargeOut, GrantMadeOut, GrantsOut, VoidOut
from quotagate.client import (
    ApiError,
    AsyncQuotagateClient,
    Charge,
    QuotagateClient,
    error_from_problem,
)
from quotagate.errors import (
    AccountBanned,
    AccountNotFound,
    BackendUnavailable,
    HoldNotFound,
    HoldSettled,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    QuotagateError,
    RateLimited,
    UnknownResource,
    ValidationError,
)


def test_sync_client_round_trip(gateway: GatewayServer, api_keys: dict[str, str]) -> None:
    acct = new_account_id()
    with (
        QuotagateClient(gateway.url, api_keys["admin"]) as admin,
        QuotagateClient(gateway.url, api_keys["service"]) as service,
    ):
        made = admin.upsert_account(acct, tier="free")
        assert (made.created, made.balance, made.durable) == (True, 100, True)
        assert admin.credit(acct, 50, "grant", description="welcome").balance == 150
        assert service.check(acct, "premium_feature", 2).allowed
        charge = service.consume(acct, "premium_feature", 2, idempotency_key="k1")
        assert (charge.cost, charge.remaining) == (10, 140)
        assert service.consume(acct, "premium_feature", 2, idempotency_key="k1") == charge
        hold = service.hold(acct, amount=40, ttl_seconds=30)
        assert hold.available == 100
        assert service.capture(acct, hold.hold_id, 15).remaining == 125
        other = service.hold(acct, resource="api_call", units=3)
        assert service.release(acct, other.hold_id).released == 3
        refund = service.credit(acct, 5, "refund", refund_of=charge.transaction_id)
        assert refund.balance == 130
        view = service.get_account(acct)
        assert (view.balance, view.reserved, view.available) == (130, 0, 130)
        page = service.transactions(acct, limit=3)
        assert [t.type for t in page.transactions] == ["refund", "spend", "spend"]
        assert page.next is not None
        assert service.resources()["premium_feature"] == 5

        with pytest.raises(InsufficientCredits) as exc:
            service.consume(acct, "premium_feature", 100)
        assert (exc.value.required, exc.value.available) == (500, 130)
        with pytest.raises(UnknownResource):
            service.consume(acct, "gold")
        with pytest.raises(InvalidAmount):
            service.consume(acct, "api_call", 0)
        with pytest.raises(IdempotencyConflict):
            service.consume(acct, "api_call", 1, idempotency_key="k1")
        with pytest.raises(HoldNotFound):
            service.release(acct, str(uuid.uuid4()))
        with pytest.raises(AccountNotFound):
            service.get_account(new_account_id())
        with pytest.raises(errors.Forbidden):
            service.credit(acct, 5, "grant")
        with pytest.raises(ValidationError):
            service.get_account("bad id!")
        admin.upsert_account(acct, status="banned")
        with pytest.raises(AccountBanned):
            service.consume(acct, "api_call")


def test_me_with_a_hook_key(gateway: GatewayServer, api_keys: dict[str, str]) -> None:
    acct = new_account_id()
    with QuotagateClient(gateway.url, api_keys["admin"]) as admin:
        admin.upsert_account(acct)
    with QuotagateClient(gateway.url, api_keys["hook"]) as hook:
        assert hook.me(acct).balance == 100
        with pytest.raises(errors.Forbidden):
            hook.get_account(acct)


def test_unknown_key_and_unreachable_gateway(gateway: GatewayServer) -> None:
    with (
        QuotagateClient(gateway.url, "qg_0000000000000000_nope") as client,
        pytest.raises(errors.Unauthorized),
    ):
        client.resources()
    with (
        QuotagateClient(f"http://127.0.0.1:{free_port()}", "k", timeout=2) as client,
        pytest.raises(BackendUnavailable),
    ):
        client.resources()


async def test_async_client(gateway: GatewayServer, api_keys: dict[str, str]) -> None:
    acct = new_account_id()
    async with AsyncQuotagateClient(gateway.url, api_keys["admin"]) as admin:
        assert (await admin.upsert_account(acct, tier="pro")).balance == 1000
        charge = await admin.consume(acct, "file_upload", 3)
        assert (charge.cost, charge.remaining) == (6, 994)
        with pytest.raises(InsufficientCredits) as exc:
            await admin.consume(acct, "premium_feature", 1000)
        assert exc.value.available == 994
        assert (await admin.get_account(acct)).balance == 994


def test_problem_mapping() -> None:
    err = error_from_problem(429, b'{"code": "rate_limited", "status": 429}', {"retry-after": "3"})
    assert isinstance(err, RateLimited)
    assert err.code == "rate_limited" and err.retry_after_ms == 3000
    unknown = error_from_problem(418, b'{"code": "teapot", "detail": "short and stout", "x": 1}')
    assert isinstance(unknown, ApiError)
    assert (unknown.code, unknown.http_status, unknown.detail, unknown.extra) == (
        "teapot", 418, "short and stout", {"x": 1},
    )  # fmt: skip
    html = error_from_problem(502, b"<html>bad gateway</html>")
    assert isinstance(html, ApiError) and html.http_status == 502


def test_sync_consume_many(gateway: GatewayServer, api_keys: dict[str, str]) -> None:
    acct, other = new_account_id(), new_account_id()
    with (
        QuotagateClient(gateway.url, api_keys["admin"]) as admin,
        QuotagateClient(gateway.url, api_keys["service"]) as service,
    ):
        admin.upsert_account(acct, tier="free")
        admin.upsert_account(other, tier="free")
        charges = [
            Charge(acct, "premium_feature", 15, idempotency_key="m-1"),
            Charge(other, "api_call", 2, description="two", metadata={"job": 1}),
            Charge(acct, "premium_feature", 10),
            Charge(acct, "gold"),
            Charge(new_account_id(), "api_call"),
            Charge(acct, "api_call", 25),
        ]
        first = service.consume_many(charges)
        again = service.consume_many(charges[:1])
        with pytest.raises(ValidationError):
            service.consume_many([])
        (malformed,) = service.consume_many([Charge("bad id!", "api_call", 0)])
        assert isinstance(malformed, QuotagateError) and malformed.code == "invalid_amount"
    assert [type(o) for o in first] == [ChargeOut, ChargeOut, InsufficientCredits,
                                        UnknownResource, AccountNotFound, ChargeOut]  # fmt: skip
    assert [(o.cost, o.remaining) for o in first if isinstance(o, ChargeOut)] == [
        (75, 25), (2, 98), (25, 0),
    ]  # fmt: skip
    refused = first[2]
    assert isinstance(refused, InsufficientCredits)
    assert (refused.required, refused.available) == (50, 25)
    assert again == first[:1]


async def test_async_consume_many(gateway: GatewayServer, api_keys: dict[str, str]) -> None:
    acct = new_account_id()
    async with AsyncQuotagateClient(gateway.url, api_keys["admin"]) as admin:
        await admin.upsert_account(acct, tier="free")
        outcomes = await admin.consume_many([Charge(acct, "api_call", 60)] * 2)
    assert isinstance(outcomes[0], ChargeOut) and outcomes[0].remaining == 40
    assert isinstance(outcomes[1], InsufficientCredits) and outcomes[1].available == 40


def _reserved_at_the_hook(gateway: GatewayServer, key: str, acct: str, units: int) -> str:
    """A reservation made as a proxy makes one: its hold id, from X-Quota-Hold-Id."""
    headers = {
        "X-Quotagate-Key": key, "X-Account-Id": acct, "X-Quota-Mode": "reserve",
        "X-Quota-Resource": "file_upload", "X-Quota-Units": str(units),
    }  # fmt: skip
    r = httpx.get(f"{gateway.url}/v1/authz", headers=headers)
    assert r.status_code == 200, r.text
    return r.headers["x-quota-hold-id"]


def test_sync_settle(gateway: GatewayServer, api_keys: dict[str, str]) -> None:
    acct = new_account_id()
    with (
        QuotagateClient(gateway.url, api_keys["admin"]) as admin,
        QuotagateClient(gateway.url, api_keys["service"]) as service,
    ):
        admin.upsert_account(acct, tier="free")
        hold_id = _reserved_at_the_hook(gateway, api_keys["hook"], acct, 10)
        settled = service.settle(hold_id, units=4, idempotency_key="s1")
        assert (settled.charged, settled.released, settled.remaining) == (8, 12, 92)
        assert service.settle(hold_id, units=4, idempotency_key="s1") == settled
        with pytest.raises(HoldSettled):
            service.settle(hold_id, amount=1)
        other = _reserved_at_the_hook(gateway, api_keys["hook"], acct, 1)
        assert service.settle(other, amount=0).transaction_id is None
        assert service.get_account(acct).balance == 92


async def test_async_settle(gateway: GatewayServer, api_keys: dict[str, str]) -> None:
    acct = new_account_id()
    async with AsyncQuotagateClient(gateway.url, api_keys["admin"]) as admin:
        await admin.upsert_account(acct, tier="free")
        hold_id = _reserved_at_the_hook(gateway, api_keys["hook"], acct, 5)
        settled = await admin.settle(hold_id, amount=13)
        assert (settled.charged, settled.shortfall, settled.balance) == (10, 3, 90)
        with pytest.raises(HoldNotFound):
            await admin.settle(ids.account_hold_id(acct, ids.new_id()), amount=1)


def test_sync_grants(gateway: GatewayServer, api_keys: dict[str, str]) -> None:
    acct = new_account_id()
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
    with (
        QuotagateClient(gateway.url, api_keys["admin"]) as admin,
        QuotagateClient(gateway.url, api_keys["service"]) as service,
    ):
        admin.upsert_account(acct, tier="free")
        made = admin.grant(acct, 40, source="promotion", priority=10, expires_at=expires,
                           idempotency_key="promo")  # fmt: skip
        assert isinstance(made, GrantMadeOut)
        assert (made.balance, made.available, made.replayed, made.durable) == (
            140,
            140,
            False,
            True,
        )
        again = admin.grant(acct, 40, source="promotion", priority=10, expires_at=expires,
                            idempotency_key="promo")  # fmt: skip
        assert (again.grant_id, again.replayed) == (made.grant_id, True)
        listed = service.grants(acct)
        assert isinstance(listed, GrantsOut)
        assert [(g.id, g.remaining, g.expires_at) for g in listed.grants] == [
            (made.grant_id, 40, expires), ("monthly", 100, None),
        ]  # fmt: skip
        assert listed.next_expiry == expires
        assert admin.get_account(acct).grants == listed.grants
        with pytest.raises(ValidationError) as bad:
            admin.grant(acct, 5, priority=101)
        assert bad.value.extra["field"] == "priority"
        with pytest.raises(errors.Forbidden):
            service.grant(acct, 5)
        voided = admin.void_grant(acct, made.grant_id, description="ended early")
        assert isinstance(voided, VoidOut)
        assert (voided.voided, voided.balance, voided.replayed) == (40, 100, False)
        with pytest.raises(errors.GrantNotFound):
            admin.void_grant(acct, made.grant_id)


async def test_async_grants(gateway: GatewayServer, api_keys: dict[str, str]) -> None:
    acct = new_account_id()
    async with AsyncQuotagateClient(gateway.url, api_keys["admin"]) as admin:
        await admin.upsert_account(acct, tier="free")
        made = await admin.grant(acct, 25, source="purchase", expires_in_seconds=3600)
        assert made.balance == 125
        listed = await admin.grants(acct)
        [explicit] = [g for g in listed.grants if g.id == made.grant_id]
        assert (explicit.source, explicit.priority, explicit.amount) == ("purchase", 50, 25)
        assert listed.next_expiry == explicit.expires_at
        assert explicit.expires_at is not None
        assert explicit.expires_at - datetime.now(UTC) <= timedelta(hours=1)
        voided = await admin.void_grant(acct, made.grant_id, idempotency_key="v")
        assert (voided.voided, voided.balance) == (25, 100)
        assert (await admin.void_grant(acct, made.grant_id, idempotency_key="v")).replayed
        with pytest.raises(errors.GrantNotFound):
            await admin.void_grant(acct, "monthly")
        assert (await admin.grants(acct)).next_expiry is None
