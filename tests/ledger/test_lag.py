"""The lag: entries waiting per partition and the oldest's age, from Redis alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from quotagate.engine import CreditEngine
from quotagate.ledger import Ledger, flush_all, outbox_lag

Acct = Callable[[str], str]


async def test_lag_counts_what_waits_and_how_old_it_is(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    empty = await outbox_lag(lengine)
    assert (empty.total, empty.oldest_age_seconds) == (0, None)
    assert len(empty.partitions) == lengine.config.partitions

    accounts = [acct(f"l{i}") for i in range(5)]
    for a in accounts:
        await lengine.upsert_account(a)  # an event and an opening grant each
    await asyncio.sleep(0.25)
    await lengine.consume(accounts[0], "api_call", 1)
    lag = await outbox_lag(lengine)
    assert lag.total == 11
    expected: dict[int, int] = {}
    for a in accounts:
        p = lengine.keys.partition_of(a)
        expected[p] = expected.get(p, 0) + 2
    expected[lengine.keys.partition_of(accounts[0])] += 1
    assert {p.partition: p.entries for p in lag.partitions if p.entries} == expected
    assert lag.oldest_age_seconds is not None and 0.25 <= lag.oldest_age_seconds < 5
    assert all((p.oldest_age_seconds is None) == (p.entries == 0) for p in lag.partitions)

    await flush_all(lengine, ledger)
    assert (await outbox_lag(lengine)).total == 0
