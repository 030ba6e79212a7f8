"""The alerts benchmark, short: both sides charge and flush, the alerts side raises its
alerts (a threshold and an unusual-consumption alert per account) and tries its webhooks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from quotagate.alerts.bench import measure_alerts


def _expiry_warnings_due(at: datetime) -> bool:
    """Whether ``at`` is within the bench's warn_hours_before of the month's end: the expiry
    warning of each account (a reset tier with monthly credits left) fires then."""
    next_month = datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC)
    return at >= next_month - timedelta(hours=648)


async def test_the_alerts_benchmark_runs_both_sides(redis_url: str, database_url: str) -> None:
    before = _expiry_warnings_due(datetime.now(UTC))
    bench = await measure_alerts(redis_url, database_url, accounts=20, charges=400, rounds=1)
    after = _expiry_warnings_due(datetime.now(UTC))
    # A threshold and an unusual-consumption alert per account, and, in the last 27 days of a
    # month, its expiring monthly credits (a run across that instant may see either).
    expected = {2 * 20 + (20 if due else 0) for due in (before, after)}
    assert bench.alerts_raised in expected
    assert bench.deliveries_tried == bench.alerts_raised
    for side in (bench.plain, bench.alerts):
        assert side["charges_per_second"] > 0 and side["flush_rows_per_second"] > 0
