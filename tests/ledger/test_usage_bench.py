"""The usage benchmark, short: it fills its own database, checks the rollup against the
ledger, and times every query."""

from __future__ import annotations

from quotagate.ledger.usage_bench import measure_usage


async def test_the_usage_benchmark_runs_and_the_rollup_matches_the_ledger(
    redis_url: str, database_url: str
) -> None:
    bench = await measure_usage(redis_url, database_url, rows=30_000, accounts=50, repeat=2)
    assert (bench.rows, bench.compare_rows) == (30_000, 30_000)
    # Per account, hour, resource and type: 50 accounts over 720 hours hold at most this.
    assert 0 < bench.rollup_rows <= 50 * 720 * 5
    assert set(bench.queries_ms) == {
        "busy_account_month_by_day",
        "busy_account_month_by_hour",
        "busy_account_month_by_day_from_ledger_rows",
        "all_accounts_last_day_top_10",
        "all_accounts_month_by_resource",
    }
    assert all(q["median"] > 0 for q in bench.queries_ms.values())
