"""Alerts found by the flush, against real Redis and PostgreSQL: balance thresholds fire once
per crossing and re-arm, a burst raises one unusual-consumption alert, and a reset tier's
unused monthly credits get one warning per month."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg

from quotagate.alerts.detect import expiry_warnings
from quotagate.alerts.store import Alert, list_alerts
from quotagate.engine import CreditEngine
from quotagate.ledger import Ledger, flush_all

Acct = Callable[[str], str]


async def _alerts(ledger: Ledger, account: str, kind: str) -> list[Alert]:
    return list(reversed(await list_alerts(ledger, account_id=account, kind=kind)))


async def test_a_threshold_fires_once_per_crossing_and_rearms_above(
    aengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("low")
    await aengine.upsert_account(a, tier="free")  # 100 credits; the rule: below 50
    await aengine.consume(a, "premium_feature", 12)  # 40: below
    await flush_all(aengine, ledger)
    await aengine.consume(a, "premium_feature", 1)  # 35: below again, not recovered
    await flush_all(aengine, ledger)
    assert [x.details["balance"] for x in await _alerts(ledger, a, "balance_below")] == [40]

    await aengine.credit(a, 30, "grant")  # 65: re-armed
    await flush_all(aengine, ledger)
    await aengine.consume(a, "api_call", 20)  # 45: fires again
    # In one batch: back above (75), below (40) again: every crossing counts.
    await aengine.credit(a, 30, "grant")
    await aengine.consume(a, "premium_feature", 7)
    await flush_all(aengine, ledger)
    fired = await _alerts(ledger, a, "balance_below")
    assert [(x.details["balance"], x.details["threshold"]) for x in fired] == [
        (40, 50), (45, 50), (40, 50),
    ]  # fmt: skip
    await flush_all(aengine, ledger)  # nothing new: nothing more
    assert len(await _alerts(ledger, a, "balance_below")) == 3


async def test_a_percentage_of_the_monthly_grant(
    aengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("pct")
    await aengine.upsert_account(a, tier="pro")  # 1000; below 10%: below 100
    await aengine.consume(a, "premium_feature", 180)  # 100: not below
    await flush_all(aengine, ledger)
    assert await _alerts(ledger, a, "balance_below") == []
    await aengine.consume(a, "api_call")  # 99
    await flush_all(aengine, ledger)
    fired = await _alerts(ledger, a, "balance_below")
    assert [(x.details["balance"], x.details["threshold"]) for x in fired] == [(99, 100)]


async def _usual_hours(ledger: Ledger, account: str, spent_per_hour: int) -> None:
    """Spends in each of the three hours before this one: the account's usual rate."""
    now = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
    async with ledger.pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO credit_transactions (id, account_id, amount, type, resource, units,"
            " balance_after, created_at) VALUES ($1, $2, $3, 'spend', 'api_call', $4, 0, $5)",
            [
                (f"{account}-h{h}", account, -spent_per_hour, spent_per_hour,
                 now - timedelta(hours=h))
                for h in (1, 2, 3)
            ],
        )  # fmt: skip


async def test_a_burst_raises_one_unusual_consumption_alert(
    aengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    busy, calm = acct("burst"), acct("calm")
    for a in (busy, calm):
        await aengine.upsert_account(a, tier="pro")
        await _usual_hours(ledger, a, 5)
    await flush_all(aengine, ledger)
    for _ in range(40):  # 40 credits this hour, usual 5 an hour: over 3 x 5, and over 20
        await aengine.consume(busy, "api_call")
    for _ in range(12):  # 12: over 3 x 5, but under min_credits
        await aengine.consume(calm, "api_call")
    await flush_all(aengine, ledger, batch_size=7)  # many batches, checked after each
    await aengine.consume(busy, "api_call")
    await flush_all(aengine, ledger)
    fired = await _alerts(ledger, busy, "unusual_consumption")
    assert len(fired) == 1
    assert (fired[0].details["usual"], fired[0].details["multiple"]) == (5.0, 3.0)
    assert 20 <= fired[0].details["spent"] <= 40
    assert await _alerts(ledger, calm, "unusual_consumption") == []


async def test_unused_monthly_credits_get_one_warning_per_month(
    aengine: CreditEngine, own_ledger: Ledger, acct: Acct
) -> None:
    used, unused, other = acct("used"), acct("unused"), acct("add-tier")
    await aengine.upsert_account(used, tier="monthly")
    await aengine.upsert_account(unused, tier="monthly")
    await aengine.upsert_account(other, tier="pro")  # renews by adding: never expires
    await aengine.consume(used, "premium_feature", 100)  # all 500 monthly credits spent
    await flush_all(aengine, own_ledger)
    config = aengine.config
    month_end = datetime(2027, 1, 1, tzinfo=UTC)
    assert await expiry_warnings(config, own_ledger, month_end - timedelta(hours=49)) == []
    first = await expiry_warnings(config, own_ledger, month_end - timedelta(hours=47))
    again = await expiry_warnings(config, own_ledger, month_end - timedelta(minutes=1))
    assert [(x.account_id, x.details["monthly_credits"]) for x in first] == [(unused, 500)]
    assert again == []
    assert first[0].details["period"] == "2026-12"
    next_month = await expiry_warnings(config, own_ledger, month_end + timedelta(days=30))
    assert [x.account_id for x in next_month] == [unused]


async def test_an_explicit_grant_about_to_expire_gets_one_warning(
    aengine: CreditEngine, own_ledger: Ledger, acct: Acct
) -> None:
    soon, later, spent = acct("grant-soon"), acct("grant-later"), acct("grant-spent")
    for a in (soon, later, spent):
        await aengine.upsert_account(a, tier="pro")
    now = datetime.now(UTC)
    expiring = await aengine.grant(
        soon, 30, source="promotion", expires_at=now + timedelta(hours=5)
    )
    await aengine.grant(later, 30, expires_at=now + timedelta(days=20))  # past the window
    await aengine.grant(spent, 10, priority=0, expires_at=now + timedelta(hours=5))
    await aengine.consume(spent, "api_call", 10)  # the grant is gone: nothing to warn of
    await flush_all(aengine, own_ledger)
    first = await expiry_warnings(aengine.config, own_ledger, now)
    mine = [x for x in first if x.account_id in (soon, later, spent)]
    assert [
        (x.account_id, x.rule, x.details["grant_id"], x.details["remaining"]) for x in mine
    ] == [(soon, "grant_expiry", expiring.grant_id, 30)]
    assert mine[0].details["source"] == "promotion"
    again = await expiry_warnings(aengine.config, own_ledger, now + timedelta(hours=1))
    assert [x for x in again if x.account_id in (soon, later, spent)] == []


async def test_alert_detection_failing_never_fails_the_flush(
    aengine: CreditEngine, own_ledger: Ledger, acct: Acct, own_ledger_url: str
) -> None:
    a = acct("nofail")
    conn = await asyncpg.connect(own_ledger_url)
    try:
        await conn.execute("ALTER TABLE alert_arms RENAME TO alert_arms_away")
        await aengine.upsert_account(a, tier="free")
        await aengine.consume(a, "premium_feature", 12)
        results = await flush_all(aengine, own_ledger)
        assert sum(r.inserted for r in results) == 2
        assert await list_alerts(own_ledger, account_id=a) == []
    finally:
        await conn.execute("ALTER TABLE alert_arms_away RENAME TO alert_arms")
        await conn.close()
