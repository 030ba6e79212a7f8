"""`quotagate usage`, `alerts`, `webhooks`: an account's usage per resource, every account's by account, as a table
and as JSON; bad input in one sentence."""

from __future__ import annotations

import asyncio

import asyncpg
from tests.cli.runner import invoke
from tests.cli.test_ops_cli import env, fails, ok, ok_json  # noqa: F401 - env is a fixture

from quotagate.alerts.store import NewAlert, insert_alerts
from quotagate.alerts.webhooks import new_secret


def test_usage_of_one_account_and_of_all(env: dict[str, str]) -> None:  # noqa: F811
    for account in ("ann", "bob"):
        ok(["accounts", "create", account, "--tier", "free"], env)
    ok(["grant", "bob", "7"], env)
    ok(["flush"], env)
    ok(["grant", "ann", "5"], env)  # written through, and still in the outbox: counted once

    mine = ok_json(["usage", "ann", "--window", "hour"], env)
    assert [(r["resource"], r["granted"], r["transactions"]) for r in mine["rows"]] == [
        (None, 105, 2)
    ]
    assert (mine["window"], mine["group_by"], mine["pending"]) == ("hour", "resource", 0)
    everyone = ok_json(["usage", "--group-by", "account", "--limit", "10"], env)
    rows = {r["account_id"]: (r["granted"], r["transactions"]) for r in everyone["rows"]}
    assert rows == {"ann": (105, 2), "bob": (107, 2)}

    text = ok(["usage", "ann"], env).splitlines()
    assert text[0].split() == ["WINDOW_START", "ACCOUNT_ID", "SPENT", "GRANTED", "TRANSACTIONS"]
    assert text[1].split()[1:] == ["ann", "0", "105", "2"]

    fails(["usage", "ann", "--from", "tomorrow"], env, 2)
    fails(["usage", "nobody"], env, 2)
    assert invoke(["usage", "ann", "--group-by", "account"], env).code == 2


def test_alerts_and_webhook_deliveries(env: dict[str, str], own_ledger_url: str) -> None:  # noqa: F811
    async def raise_one() -> None:
        conn = await asyncpg.connect(own_ledger_url)
        try:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO webhook_endpoints (id, url, events, secret)"
                    " VALUES ('ep_1', 'http://127.0.0.1:9/', '{*}', $1)", new_secret()
                )  # fmt: skip
                new = NewAlert("balance_below", "ann", "balance:tier=*:below=5", "k1",
                               {"balance": 4, "threshold": 5})  # fmt: skip
                await insert_alerts(conn, [new])
            await conn.execute("UPDATE webhook_deliveries SET status = 'dead', attempts = 8")
        finally:
            await conn.close()

    asyncio.run(raise_one())
    [alert] = ok_json(["alerts", "--kind", "balance_below"], env)["alerts"]
    assert (alert["account_id"], alert["details"]) == ("ann", {"balance": 4, "threshold": 5})
    assert "balance=4 threshold=5" in ok(["alerts"], env)
    assert ok_json(["alerts", "--account", "bob"], env) == {"alerts": []}
    [dead] = ok_json(["webhooks", "deliveries", "--status", "dead"], env)["deliveries"]
    assert (dead["event"], dead["attempts"]) == ("balance_below", 8)
    assert ok_json(["webhooks", "redeliver", "--dead"], env) == {"redelivered": 1}
    [again] = ok_json(["webhooks", "deliveries"], env)["deliveries"]
    assert (again["status"], again["attempts"]) == ("pending", 0)
    assert invoke(["webhooks", "redeliver"], env).code == 2
