"""The operators' commands through the command's entry point, against real Redis and
PostgreSQL: tables for people, JSON for scripts, exit codes that mean something, and errors
in one sentence without a traceback. The last test runs the installed command itself."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import redis
from tests.cli.runner import invoke
from tests.jobs.configs import FREE_AND_PRO
from tests.jobs.ledger_db import new_database
from tests.jobs.processes import quotagate_env, run_quotagate
from tests.support.servers import RedisProcess

from quotagate.config import parse_config
from quotagate.engine import CreditEngine

CONFIG = FREE_AND_PRO + """\n[holds]\nmin_ttl_seconds = 1\n"""


@pytest.fixture
def env(redis_url: str, own_ledger_url: str, key_prefix: str, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    return quotagate_env(redis_url, own_ledger_url, key_prefix, config)


def ok(args: list[str], env: dict[str, str]) -> str:
    done = invoke(args, env)
    assert done.code == 0, (args, done.stdout, done.stderr)
    return done.stdout


def ok_json(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(ok([*args, "--json"], env))
    return document


def fails(args: list[str], env: dict[str, str], code: int) -> str:
    """The command exits with ``code`` and says why in one line on stderr, no traceback."""
    done = invoke(args, env)
    assert done.code == code, (args, done.code, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def _consume(redis_url: str, key_prefix: str, account_id: str, units: int) -> str:
    """A spend, made as a service would (the CLI makes none)."""

    async def run() -> str:
        engine = CreditEngine.from_url(redis_url, parse_config(CONFIG), prefix=key_prefix)
        try:
            await engine.initialize()
            return (await engine.consume(account_id, "unit", units)).transaction_id
        finally:
            await engine.aclose()

    return asyncio.run(run())


def test_a_refund_names_its_spend_and_a_debit_stops_at_the_floor(
    env: dict[str, str], redis_url: str, key_prefix: str
) -> None:
    ok(["accounts", "create", "ann", "--tier", "free"], env)  # 100
    ok(["accounts", "create", "bob", "--tier", "free"], env)
    spend = _consume(redis_url, key_prefix, "ann", 30)
    of_bob = _consume(redis_url, key_prefix, "bob", 30)
    assert "refund_of" in fails(["grant", "--type", "refund", "ann", "5"], env, 2)
    assert "no spend" in fails(
        ["grant", "--type", "refund", "--refund-of", of_bob, "ann", "5"], env, 2
    )
    refunded = ok_json(["grant", "--type", "refund", "--refund-of", spend, "ann", "20"], env)
    assert (refunded["balance"], refunded["durable"]) == (90, True)
    refused = fails(["grant", "--type", "refund", "--refund-of", spend, "ann", "11"], env, 2)
    assert "at most 10 more" in refused
    assert "below zero" in fails(["grant", "--type", "adjust", "ann", "--", "-91"], env, 2)
    debited = json.loads(ok(["grant", "--type", "adjust", "--json", "ann", "--", "-90"], env))
    assert debited["balance"] == 0


@pytest.mark.parametrize(
    ("kind", "named"), [("grant", "a grant"), ("earn", "an earning"), ("refund", "a refund")]
)
def test_a_negative_credit_points_to_type_adjust(
    env: dict[str, str], kind: str, named: str
) -> None:
    ok(["accounts", "create", "ann", "--tier", "free"], env)
    assert fails(["grant", "--type", kind, "ann", "--", "-5"], env, 2) == (
        f"error: {named} adds credits; to take 5 away, make it an adjustment: "
        "`quotagate grant --type adjust ann -- -5`"
    )
    assert ok_json(["accounts", "show", "ann"], env)["balance"] == 100
    history = ok_json(["history", "ann"], env)["transactions"]
    assert [t["type"] for t in history] == ["grant"]  # the opening grant only


def test_accounts_grant_and_history(env: dict[str, str]) -> None:
    out = ok(["accounts", "create", "ann", "--tier", "pro"], env)
    assert "created account ann" in out and "1000" in out
    assert "already exists" in fails(["accounts", "create", "ann"], env, 2)
    assert ok_json(["accounts", "create", "bob", "--overdraft-limit", "5"], env)["durable"]

    granted = ok_json(["grant", "ann", "25", "--description", "welcome"], env)
    assert (granted["balance"], granted["durable"], granted["type"]) == (1025, True, "grant")
    adjusted = json.loads(ok(["grant", "--type", "adjust", "--json", "ann", "--", "-5"], env))
    assert adjusted["balance"] == 1020
    assert "amount" in fails(["grant", "ann", "0"], env, 2)
    assert fails(["grant", "ann", "--", "-5"], env, 2) == (
        "error: a grant adds credits; to take 5 away, make it an adjustment: "
        "`quotagate grant --type adjust ann -- -5`"
    )
    assert fails(["grant", "ann", "-5"], env, 2) == (
        "error: -5 reads as an option: a negative amount is an adjustment and goes after "
        "`--`: `quotagate grant --type adjust ACCOUNT_ID -- -5` (see `quotagate grant --help`)"
    )
    assert "no such account" in fails(["grant", "nobody", "5"], env, 2)

    shown = ok_json(["accounts", "show", "ann"], env)
    assert (shown["balance"], shown["monthly_credits"], shown["purchased_credits"]) == (
        1020, 1000, 20,
    )  # fmt: skip
    banned = ok_json(["accounts", "update", "bob", "--status", "banned"], env)
    assert banned["status"] == "banned"
    assert "no such account" in fails(["accounts", "update", "nobody", "--tier", "pro"], env, 2)

    listing = ok_json(["accounts", "list"], env)
    assert [(a["account_id"], a["status"], a["balance"]) for a in listing["accounts"]] == [
        ("ann", "active", 1020),
        ("bob", "banned", 100),
    ]
    page = ok_json(["accounts", "list", "--limit", "1"], env)
    assert page["next"] == "ann"
    assert [a["account_id"] for a in ok_json(["accounts", "list", "--after", "ann"], env)[
        "accounts"
    ]] == ["bob"]  # fmt: skip

    history = ok_json(["history", "ann"], env)["transactions"]
    assert [(t["type"], t["amount"]) for t in history] == [
        ("adjust", -5), ("grant", 25), ("grant", 1000),
    ]  # fmt: skip
    table = ok(["history", "ann"], env)
    header, *rows = table.strip().splitlines()
    assert header.split()[:4] == ["ID", "CREATED_AT", "TYPE", "AMOUNT"]
    assert len(rows) == 3 and "welcome" in rows[1]


def test_reconcile_names_drift_exits_1_and_repairs_it(
    env: dict[str, str], redis_url: str, key_prefix: str
) -> None:
    for a in ("ann", "bob", "cy"):
        ok(["accounts", "create", a], env)
    ok(["flush"], env)
    assert "the books balance: 3 accounts" in ok(["reconcile"], env)

    client = redis.Redis.from_url(redis_url)
    key = next(iter(client.scan_iter(match=f"{key_prefix}:*:a:bob")))
    client.hincrby(key, "b", 9)
    client.close()

    done = invoke(["reconcile"], env)
    assert done.code == 1, done.stderr
    header, row = done.stdout.strip().splitlines()[:2]
    assert header.split()[:6] == ["ACCOUNT", "CHECK", "EXPECTED", "FOUND", "DIFFERENCE", "LIKELY"]
    assert row.split()[:5] == ["bob", "redis", "100", "109", "9"]
    report = json.loads(invoke(["reconcile", "--json"], env).stdout)
    assert report["balanced"] is False
    assert [(d["account_id"], d["difference"]) for d in report["drifts"]] == [("bob", 9)]

    repaired = json.loads(invoke(["reconcile", "--repair", "--json"], env).stdout)
    assert [(r["account_id"], r["action"], r["amount"]) for r in repaired["repairs"]] == [
        ("bob", "adjust", 9)
    ]
    assert repaired["after_repair"]["balanced"] is True
    assert "the books balance" in ok(["reconcile"], env)
    history = ok_json(["history", "bob"], env)["transactions"]
    assert (history[0]["type"], history[0]["amount"]) == ("adjust", 9)
    assert "--partition" in fails(["reconcile", "--partition", "4"], env, 2)


def test_recover_after_flushall(
    private_redis: RedisProcess, own_ledger_url: str, key_prefix: str, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    env = quotagate_env(private_redis.url, own_ledger_url, key_prefix, config)
    for a, tier in (("ann", "pro"), ("bob", "free")):
        ok(["accounts", "create", a, "--tier", tier], env)
    ok(["grant", "bob", "30"], env)
    ok(["flush"], env)
    ok(["grant", "ann", "7"], env)  # written through; still in the outbox too
    assert "quotagate flush" in fails(["recover"], env, 4)

    client = redis.Redis.from_url(private_redis.url)
    client.flushall()
    client.close()
    assert "quotagate recover" in fails(["accounts", "show", "ann"], env, 3)
    assert "quotagate recover" in fails(["grant", "ann", "1"], env, 3)

    tally = ok_json(["recover"], env)
    assert (tally["ledger_accounts"], tally["restored"], tally["already_present"]) == (2, 2, 0)
    assert ok_json(["accounts", "show", "ann"], env)["balance"] == 1007
    assert ok_json(["accounts", "show", "bob"], env)["balance"] == 130
    assert ok_json(["grant", "bob", "1"], env)["balance"] == 131
    ok(["flush"], env)
    assert "restored 0 of 2" in ok(["recover"], env)


def test_renew_and_expire_holds(
    private_redis: RedisProcess, own_ledger_url: str, key_prefix: str, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    env = quotagate_env(private_redis.url, own_ledger_url, key_prefix, config)
    for a, tier in (("ann", "pro"), ("bob", "free"), ("cy", "free")):
        ok(["accounts", "create", a, "--tier", tier], env)
    ok(["accounts", "update", "cy", "--status", "banned"], env)

    first = ok_json(["renew", "--period", "2099-03"], env)
    assert (first["renewed"], first["banned"], first["granted"], first["expired"]) == (
        2, 1, 1000, 1000,
    )  # fmt: skip
    second = ok_json(["renew", "--period", "2099-03"], env)
    assert (second["renewed"], second["already_renewed"], second["granted"]) == (0, 2, 0)
    assert "2 already renewed" in ok(["renew", "--period", "2099-03"], env)
    assert "period" in fails(["renew", "--period", "2099-13"], env, 2)

    queued = ok_json(["renew", "--period", "2099-04", "--enqueue"], env)
    assert len(queued["jobs"]) == 4
    client = redis.Redis.from_url(private_redis.url)
    assert client.llen(f"rq:queue:{key_prefix}:jobs") == 4
    client.close()

    swept = ok_json(["expire-holds"], env)
    assert swept == {"holds": 0, "credits": 0, "captured": 0, "grants": 0, "grant_credits": 0}


def test_backends_down_or_behind_are_one_sentence(
    env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    down = {**env, "QUOTAGATE_REDIS_URL": "redis://127.0.0.1:1/0"}
    for args in (["accounts", "show", "ann"], ["renew"], ["expire-holds"], ["reconcile"]):
        assert "did not answer" in fails(args, down, 3)
    pg_down = {**env, "QUOTAGATE_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"}
    assert "PostgreSQL" in fails(["reconcile"], pg_down, 3)
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("partitions = 0\n")
    assert "partitions" in fails(["renew"], {**env, "QUOTAGATE_CONFIG": str(bad_config)}, 2)


def test_a_database_without_the_schema_says_which_command_to_run(env: dict[str, str]) -> None:
    with new_database(migrated=False) as url:
        unmigrated = {**env, "QUOTAGATE_DATABASE_URL": url}
        for args in (["reconcile"], ["recover"], ["accounts", "list"], ["grant", "a", "1"]):
            assert "run `quotagate migrate`" in fails(args, unmigrated, 2)


def test_the_installed_command(env: dict[str, str], redis_url: str, key_prefix: str) -> None:
    """The same contract from the real executable: exit codes, one-line errors, output."""
    created = run_quotagate(["accounts", "create", "ann", "--json"], env)
    assert created.returncode == 0 and json.loads(created.stdout)["created"], created.stderr
    assert run_quotagate(["flush"], env).returncode == 0
    client = redis.Redis.from_url(redis_url)
    key = next(iter(client.scan_iter(match=f"{key_prefix}:*:a:ann")))
    client.hincrby(key, "m", -4)
    client.close()
    drift = run_quotagate(["reconcile"], env)
    assert drift.returncode == 1 and drift.stdout.splitlines()[1].split()[:5] == [
        "ann", "redis", "100", "96", "-4",
    ], drift  # fmt: skip
    down = run_quotagate(["reconcile"], {**env, "QUOTAGATE_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert down.returncode == 3 and down.stderr.startswith(
        "error: Redis at redis://127.0.0.1:1/0 (from QUOTAGATE_REDIS_URL) did not answer"
    )
    assert len(down.stderr.strip().splitlines()) == 1, down.stderr
