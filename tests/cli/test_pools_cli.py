"""`quotagate accounts create|update|show` for a pool's members: the limit and the order of
credits set and shown, lifted with `none`; settings refused on plain accounts, members of a
missing pool refused, each in one sentence with nothing written."""

from __future__ import annotations

from tests.cli.runner import invoke
from tests.cli.test_ops_cli import _consume, env, fails, ok, ok_json  # noqa: F401 - env is a fixture


def test_a_member_is_created_shown_and_changed(
    env: dict[str, str],  # noqa: F811
    redis_url: str,
    key_prefix: str,
) -> None:
    ok(["accounts", "create", "acme", "--tier", "pro"], env)
    made = ok_json(["accounts", "create", "acme~ann", "--tier", "free", "--member-limit", "40",
                    "--own-credits-first"], env)  # fmt: skip
    assert made["created"] is True
    _consume(redis_url, key_prefix, "acme~ann", 130)  # 100 of its own, 30 from the pool
    shown = ok_json(["accounts", "show", "acme~ann"], env)
    assert shown["membership"] == {
        "pool_id": "acme", "member_limit": 40, "own_credits_first": True, "used": 30,
    }  # fmt: skip
    text = ok(["accounts", "show", "acme~ann"], env)
    assert "pool" in text and "acme" in text and "pool_paid_this_period" in text

    ok(["accounts", "update", "acme~ann", "--member-limit", "none", "--pool-pays-all"], env)
    membership = ok_json(["accounts", "show", "acme~ann"], env)["membership"]
    assert (membership["member_limit"], membership["own_credits_first"]) == (None, False)
    assert ok_json(["accounts", "show", "acme"], env)["membership"] is None


def test_member_settings_and_missing_pools_are_refused(env: dict[str, str]) -> None:  # noqa: F811
    ok(["accounts", "create", "solo", "--tier", "free"], env)
    assert "member" in fails(["accounts", "update", "solo", "--member-limit", "5"], env, 2)
    assert "member-limit" in fails(["accounts", "create", "solo~x", "--member-limit", "lots"],
                                   env, 2)  # fmt: skip
    assert "pool" in fails(["accounts", "create", "ghost~x"], env, 2)
    assert "give" in fails(["accounts", "update", "solo"], env, 2)
    fails(["accounts", "show", "ghost~x"], env, 2)


def test_the_members_of_a_pool_are_listed(env: dict[str, str]) -> None:  # noqa: F811
    ok(["accounts", "create", "a_b", "--tier", "free"], env)
    ok(["accounts", "create", "axb", "--tier", "free"], env)  # `_` is no wildcard here
    for member in ("a_b~one", "a_b~two", "axb~three"):
        ok(["accounts", "create", member, "--tier", "free"], env)
    listed = ok_json(["accounts", "list", "--pool", "a_b"], env)["accounts"]
    assert [a["account_id"] for a in listed] == ["a_b~one", "a_b~two"]
    assert "nest" in fails(["accounts", "list", "--pool", "a_b~one"], env, 2)


def test_a_pools_usage_by_member(env: dict[str, str], redis_url: str, key_prefix: str) -> None:  # noqa: F811
    ok(["accounts", "create", "team", "--tier", "pro"], env)
    ok(["accounts", "create", "team~ann", "--tier", "free"], env)
    _consume(redis_url, key_prefix, "team~ann", 7)
    _consume(redis_url, key_prefix, "team", 2)
    report = ok_json(["usage", "team", "--group-by", "member", "--window", "hour"], env)
    spent = {r["member_id"]: r["spent"] for r in report["rows"]}
    assert spent == {"team~ann": 7, None: 2}
    assert "MEMBER_ID" in ok(["usage", "team", "--group-by", "member"], env)
    mine = ok_json(["usage", "team~ann", "--window", "hour"], env)
    assert sum(r["spent"] for r in mine["rows"]) == 7
    assert invoke(["usage", "--group-by", "member"], env).code == 2


def test_a_members_history_says_who_paid_on_every_row(
    env: dict[str, str],  # noqa: F811
    redis_url: str,
    key_prefix: str,
) -> None:
    """The pool's row for a member's charge carries the pool's balance: the table names the
    payer even when the newest row is the member's own (a table's columns are its first
    row's)."""
    ok(["accounts", "create", "crew", "--tier", "pro"], env)
    ok(["accounts", "create", "crew~kim", "--tier", "free"], env)
    _consume(redis_url, key_prefix, "crew~kim", 4)  # the pool pays
    ok(["accounts", "grant", "crew~kim", "5", "--source", "purchase"], env)  # its own row, newest
    lines = ok(["history", "crew~kim"], env).splitlines()
    header = lines[0].split()
    assert header[-2:] == ["ACCOUNT_ID", "MEMBER_ID"]
    spend = next(line.split() for line in lines[1:] if " spend " in line)
    assert spend[-2:] == ["crew", "crew~kim"]
    rows = ok_json(["history", "crew~kim"], env)["transactions"]
    assert [(r["type"], r["account_id"], r["member_id"]) for r in rows][:2] == [
        ("grant", "crew~kim", None),
        ("spend", "crew", "crew~kim"),
    ]
