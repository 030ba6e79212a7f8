"""`quotagate usage`: an account's usage per resource, every account's by account, as a table
and as JSON; bad input in one sentence."""

from __future__ import annotations

from tests.cli.runner import invoke
from tests.cli.test_ops_cli import env, fails, ok, ok_json  # noqa: F401 - env is a fixture


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
