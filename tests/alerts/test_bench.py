"""The alerts benchmark, short: both sides charge and flush, the alerts side raises its
alerts (a threshold and an unusual-consumption alert per account) and tries its webhooks."""

from __future__ import annotations

from quotagate.alerts.bench import measure_alerts


async def test_the_alerts_benchmark_runs_both_sides(redis_url: str, database_url: str) -> None:
    bench = await measure_alerts(redis_url, database_url, accounts=20, charges=400, rounds=1)
    assert bench.alerts_raised == 2 * 20
    assert bench.deliveries_tried == 2 * 20
    for side in (bench.plain, bench.alerts):
        assert side["charges_per_second"] > 0 and side["flush_rows_per_second"] > 0
