"""Webhooks against a real local receiver: every kind of alert arrives signed (the signature
verifies with the standardwebhooks package), a receiver that fails three times gets the
delivery on the fourth, one that always fails leaves it dead until redelivered, and a slow
one costs the delivery round its timeout and the flush nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from tests.alerts.receiver import Receiver, receiver
from tests.alerts.test_detect import _usual_hours

from quotagate.alerts.detect import expiry_warnings
from quotagate.alerts.webhooks import (
    create_endpoint,
    delete_endpoint,
    deliver_due,
    list_deliveries,
    list_endpoints,
    redeliver,
    signed_headers,
)
from quotagate.config import Webhooks
from quotagate.engine import CreditEngine
from quotagate.errors import ValidationError, WebhookNotFound
from quotagate.ledger import Ledger, flush_all

Acct = Callable[[str], str]
POLICY = Webhooks(timeout_ms=1000, max_attempts=4, backoff_seconds=0.05)


def test_signatures_match_the_specifications_example() -> None:
    """The example of the Standard Webhooks specification (and its reference libraries)."""
    headers = signed_headers(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        '{"test": 2432232314}',
        datetime.fromtimestamp(1614265330, UTC),
    )
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert headers["webhook-timestamp"] == "1614265330"
    assert headers["webhook-id"] == "msg_p5jXN8AQM9LWM0D4loKWxJek"


async def _deliver_until_settled(ledger: Ledger, rounds: int = 40) -> None:
    for _ in range(rounds):
        await deliver_due(ledger, POLICY)
        pending = await list_deliveries(ledger, status="pending")
        if not pending:
            return
        await asyncio.sleep(0.05)


def _verified(hook: Receiver, secret: str) -> list[dict[str, object]]:
    bodies = []
    for r in hook.delivered():
        payload = Webhook(secret).verify(r.body, r.headers)
        assert isinstance(payload, dict)
        bodies.append(payload)
    return bodies


async def test_every_alert_reaches_the_receiver_signed(
    aengine: CreditEngine, own_ledger: Ledger, acct: Acct
) -> None:
    low, burst, monthly = acct("hook-low"), acct("hook-burst"), acct("hook-monthly")
    with receiver() as hook:
        endpoint, secret = await create_endpoint(own_ledger, hook.url, ["*"])
        assert secret.startswith("whsec_")
        await aengine.upsert_account(low, tier="free")
        await aengine.consume(low, "premium_feature", 12)  # below 50
        await aengine.upsert_account(burst, tier="pro")
        await aengine.upsert_account(monthly, tier="monthly")
        await flush_all(aengine, own_ledger)
        await _usual_hours(own_ledger, burst, 5)
        for _ in range(30):
            await aengine.consume(burst, "api_call")
        await flush_all(aengine, own_ledger)
        month_end = datetime(2027, 1, 1, tzinfo=UTC)
        await expiry_warnings(aengine.config, own_ledger, month_end - timedelta(hours=1))
        await _deliver_until_settled(own_ledger)

        payloads = _verified(hook, secret)
        seen = sorted((p["type"], p["data"]["account_id"]) for p in payloads)  # type: ignore[index]
        assert seen == sorted([
            ("balance_below", low), ("unusual_consumption", burst),
            ("credits_expiring", monthly),
        ])  # fmt: skip
        ids = [r.headers["webhook-id"] for r in hook.delivered()]
        assert len(set(ids)) == 3
        tampered = hook.delivered()[0]
        with pytest.raises(Exception, match="signature"):
            Webhook(secret).verify(tampered.body.replace("}", " }", 1), tampered.headers)
        assert [e.id for e in await list_endpoints(own_ledger)] == [endpoint.id]


async def test_a_receiver_failing_three_times_gets_it_on_the_fourth(
    aengine: CreditEngine, own_ledger: Ledger, acct: Acct
) -> None:
    a = acct("flaky")
    with receiver(fail_first=3) as hook:
        _, secret = await create_endpoint(own_ledger, hook.url, ["balance_below"])
        await aengine.upsert_account(a, tier="free")
        await aengine.consume(a, "premium_feature", 12)
        await flush_all(aengine, own_ledger)
        await _deliver_until_settled(own_ledger)
    assert [r.answered for r in hook.requests] == [500, 500, 500, 204]
    assert len({r.headers["webhook-id"] for r in hook.requests}) == 1  # one delivery, 4 tries
    [delivery] = await list_deliveries(own_ledger)
    assert (delivery.status, delivery.attempts, delivery.last_status) == ("delivered", 4, 204)
    assert len(_verified(hook, secret)) == 1


async def test_the_last_failure_is_dead_until_redelivered(
    aengine: CreditEngine, own_ledger: Ledger, acct: Acct
) -> None:
    a = acct("dead")
    with receiver(fail_first=4) as hook:
        await create_endpoint(own_ledger, hook.url, ["balance_below"])
        await aengine.upsert_account(a, tier="free")
        await aengine.consume(a, "premium_feature", 12)
        await flush_all(aengine, own_ledger)
        await _deliver_until_settled(own_ledger)
        [dead] = await list_deliveries(own_ledger, status="dead")
        assert (dead.attempts, dead.last_error) == (4, "HTTP 500")
        await deliver_due(own_ledger, POLICY)
        assert len(hook.requests) == 4  # a dead delivery is not tried again on its own
        assert await redeliver(own_ledger, all_dead=True) == 1
        await _deliver_until_settled(own_ledger)
    assert [r.answered for r in hook.requests] == [500, 500, 500, 500, 204]
    [delivery] = await list_deliveries(own_ledger)
    assert (delivery.status, delivery.attempts) == ("delivered", 1)


async def test_a_slow_receiver_costs_the_round_its_timeout_and_the_flush_nothing(
    aengine: CreditEngine, own_ledger: Ledger, acct: Acct
) -> None:
    accounts = [acct(f"slow{i}") for i in range(5)]
    with receiver(delay_seconds=3.0) as hook:
        await create_endpoint(own_ledger, hook.url, ["*"])
        for a in accounts:
            await aengine.upsert_account(a, tier="free")
            await aengine.consume(a, "premium_feature", 12)
        started = time.monotonic()
        await flush_all(aengine, own_ledger)
        flush_seconds = time.monotonic() - started
        assert hook.requests == []  # the flush sends nothing
        started = time.monotonic()
        sent = await deliver_due(own_ledger, POLICY)
        round_seconds = time.monotonic() - started
    assert (sent.delivered, sent.retried) == (0, 5)
    assert flush_seconds < 2.0
    assert 0.9 < round_seconds < 2.5  # five endpoints' tries at once, each cut at 1 s


async def test_endpoints_are_checked_and_deleted(own_ledger: Ledger) -> None:
    for url, events in (("ftp://x/", ["*"]), ("http://h/", []), ("http://h/", ["nope"])):
        with pytest.raises(ValidationError):
            await create_endpoint(own_ledger, url, events)
    with pytest.raises(ValidationError):
        await create_endpoint(own_ledger, "http://h/", ["*"], secret="not base64!")
    endpoint, _ = await create_endpoint(own_ledger, "https://h.example/x", ["credits_expiring"])
    await delete_endpoint(own_ledger, endpoint.id)
    with pytest.raises(WebhookNotFound):
        await delete_endpoint(own_ledger, endpoint.id)
    assert json.dumps([e.id for e in await list_endpoints(own_ledger)]) == "[]"
