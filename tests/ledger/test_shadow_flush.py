"""The flush writes shadow streams to ``shadow_charges``; the report sums them; a bad entry is
dropped without stopping the rest; nothing of it touches the ledger's money."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from tests.jobs.processes import run_quotagate
from tests.ledger.support import assert_books_balance

from quotagate.engine import CreditEngine
from quotagate.ledger import Ledger, flush_all
from quotagate.ledger.shadow import pending_shadow, reset_shadow, shadow_report
from quotagate.metrics import SHADOW_ENTRIES_DROPPED

Acct = Callable[[str], str]
WIDE = (datetime.now(UTC) - timedelta(days=1), datetime.now(UTC) + timedelta(days=1))


async def test_flushed_shadow_charges_are_reported_once(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a, b = acct("sh-a"), acct("sh-b")
    await lengine.upsert_account(a, tier="free")  # 100 opening credits
    await lengine.upsert_account(b, tier="free")
    for _ in range(12):
        await lengine.shadow(a, "premium_feature", 2)  # 10 each: 10 charged, 2 refused
    for _ in range(3):
        await lengine.shadow(b, "api_call", 1)
    await lengine.consume(b, "api_call", 4)  # a real charge beside them
    assert await pending_shadow(lengine) == 15

    results = await flush_all(lengine, ledger)
    assert sum(r.shadow for r in results) == 15
    assert await pending_shadow(lengine) == 0
    await flush_all(lengine, ledger)  # nothing twice

    report = {t.account_id: t for t in await shadow_report(ledger, *WIDE, account_id=None)}
    ta, tb = report[a], report[b]
    assert (ta.resource, ta.requests, ta.charged, ta.charged_credits) == (
        "premium_feature",
        12,
        10,
        100,
    )
    assert (ta.denied, ta.denied_credits, ta.denied_by) == (2, 20, {"insufficient_credits": 2})
    assert (tb.requests, tb.charged, tb.charged_credits, tb.denied) == (3, 3, 3, 0)
    only_b = await shadow_report(ledger, *WIDE, account_id=b)
    assert [t.account_id for t in only_b] == [b]
    account = await lengine.get_account(a)
    assert account.balance == 100  # the shadow charged nothing
    await assert_books_balance(lengine, ledger, [a, b])


async def test_a_bad_shadow_entry_is_dropped_and_the_rest_is_written(
    lengine: CreditEngine, ledger: Ledger, acct: Acct
) -> None:
    a = acct("sh-bad")
    await lengine.upsert_account(a, tier="free")
    first = await lengine.shadow(a, "api_call", 1)
    stream = lengine.keys.shadow(lengine.keys.partition_of(a))
    await lengine.redis.xadd(stream, {"id": "x", "a": a, "dec": "charged"})  # no res, u, c
    await lengine.redis.xadd(
        stream, {"id": "y\x00", "a": a, "res": "api_call", "u": "1", "c": "1", "dec": "charged",
                 "av": "1"},
    )  # fmt: skip
    await lengine.redis.xadd(
        stream, {"id": "z", "a": a, "res": "api_call", "u": "1", "c": "1", "dec": "charged",
                 "av": str(2**70)},
    )  # fmt: skip  # reads as a shadow entry; PostgreSQL's bigint cannot hold it
    last = await lengine.shadow(a, "api_call", 1)
    dropped = SHADOW_ENTRIES_DROPPED._value.get()

    await flush_all(lengine, ledger)

    assert SHADOW_ENTRIES_DROPPED._value.get() == dropped + 3
    assert await pending_shadow(lengine) == 0
    async with ledger.pool.acquire() as conn:
        ids = {
            r["id"]
            for r in await conn.fetch("SELECT id FROM shadow_charges WHERE account_id = $1", a)
        }
    assert ids == {first.transaction_id, last.transaction_id}


async def test_reset_starts_shadow_balances_again(lengine: CreditEngine, acct: Acct) -> None:
    a, b = acct("sh-r1"), acct("sh-r2")
    for x in (a, b):
        await lengine.upsert_account(x, tier="free")
        assert (await lengine.shadow(x, "premium_feature", 20)).remaining == 0
        assert (await lengine.shadow(x, "api_call")).shadow == "insufficient_credits"
    assert await reset_shadow(lengine, a) == 1
    assert (await lengine.shadow(a, "api_call")).remaining == 99
    assert (await lengine.shadow(b, "api_call")).shadow == "insufficient_credits"
    assert await reset_shadow(lengine) == 2
    assert (await lengine.shadow(b, "api_call")).remaining == 99


async def test_the_shadow_commands_report_flush_and_reset(
    lengine: CreditEngine, acct: Acct, ledger_url: str, key_prefix: str, redis_url: str,
    queue_url: str, config_file: str,
) -> None:  # fmt: skip
    a = acct("sh-cli")
    await lengine.upsert_account(a, tier="free")
    for _ in range(21):
        await lengine.shadow(a, "premium_feature", 1)  # 20 charged, 1 refused
    env = {
        "QUOTAGATE_REDIS_URL": redis_url, "QUOTAGATE_QUEUE_URL": queue_url,
        "QUOTAGATE_DATABASE_URL": ledger_url, "QUOTAGATE_KEY_PREFIX": key_prefix,
        "QUOTAGATE_CONFIG": config_file,
    }  # fmt: skip
    before = run_quotagate(["shadow", "report", a], env)
    assert before.returncode == 0, before.stderr
    assert (
        "no shadow charges" in before.stdout
        and "21 shadow charges are not in the ledger" in before.stdout
    )
    assert run_quotagate(["flush"], env).returncode == 0
    done = run_quotagate(["shadow", "report", a, "--json"], env)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["pending"] == 0
    assert body["rows"] == [{
        "account_id": a, "resource": "premium_feature", "requests": 21, "charged": 20,
        "charged_credits": 100, "denied": 1, "denied_credits": 5,
        "denied_by": {"insufficient_credits": 1},
    }]  # fmt: skip
    human = run_quotagate(["shadow", "report", a], env).stdout
    assert "insufficient_credits 1" in human and "charged_credits 100" in human
    bad = run_quotagate(["shadow", "report", "--from", "yesterday"], env)
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
    assert run_quotagate(["shadow", "reset"], env).returncode == 2
    reset = run_quotagate(["shadow", "reset", a], env)
    assert reset.returncode == 0 and reset.stdout.strip() == "cleared 1 shadow balance"
    assert (await lengine.shadow(a, "premium_feature", 1)).shadow == "charged"
