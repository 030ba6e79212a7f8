"""`quotagate accounts grant|grants|void-grant`: make an explicit grant (written through),
list an account's grants in spend order, void one; bad terms exit 2 and write nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from tests.cli.runner import invoke
from tests.cli.test_ops_cli import env, fails, ok, ok_json  # noqa: F401 - env is a fixture

from quotagate.cli.grants import parse_duration


def _ledger_amounts(database_url: str, account_id: str) -> list[tuple[str, int]]:
    async def read() -> list[tuple[str, int]]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT type, amount FROM credit_transactions WHERE account_id = $1"
                " ORDER BY created_at",
                account_id,
            )
            return [(r["type"], r["amount"]) for r in rows]
        finally:
            await conn.close()

    return asyncio.run(read())


def test_grant_list_and_void(env: dict[str, str], own_ledger_url: str) -> None:  # noqa: F811
    ok(["accounts", "create", "ann", "--tier", "free"], env)
    before = datetime.now(UTC)
    made = ok_json(["accounts", "grant", "ann", "40", "--source", "purchase", "--priority", "10",
                    "--expires-in", "30d", "--description", "pack"], env)  # fmt: skip
    assert (made["balance"], made["source"], made["priority"], made["durable"]) == (
        140, "purchase", 10, True,
    )  # fmt: skip
    expires = datetime.fromisoformat(made["expires_at"])
    assert before + timedelta(days=30) <= expires <= datetime.now(UTC) + timedelta(days=30)
    assert _ledger_amounts(own_ledger_url, "ann") == [("grant", 100), ("grant", 40)]
    never = ok_json(["accounts", "grant", "ann", "5", "--priority", "90"], env)

    listed = ok_json(["accounts", "grants", "ann"], env)
    assert [(g["id"], g["remaining"], g["amount"]) for g in listed["grants"]] == [
        (made["grant_id"], 40, 40), ("monthly", 100, 100), (never["grant_id"], 5, 5),
    ]  # fmt: skip
    assert datetime.fromisoformat(listed["next_expiry"]) == expires
    text = ok(["accounts", "grants", "ann"], env).splitlines()
    assert text[0].split() == ["ID", "SOURCE", "PRIORITY", "REMAINING", "EXPIRES"]
    assert text[1].split()[:4] == [made["grant_id"], "purchase", "10", "40/40"]
    assert text[3].split() == [never["grant_id"], "promotion", "90", "5/5", "never"]
    assert text[-1] == f"next expiry: {expires.isoformat()}"
    shown = ok_json(["accounts", "show", "ann"], env)
    assert (shown["grants"], shown["next_expiry"]) == (listed["grants"], listed["next_expiry"])
    assert shown["balance"] == 145
    assert f"{made['grant_id']}  purchase" in ok(["accounts", "show", "ann"], env)

    voided = ok_json(["accounts", "void-grant", "ann", made["grant_id"]], env)
    assert (voided["voided"], voided["balance"], voided["replayed"]) == (40, 105, False)
    line = fails(["accounts", "void-grant", "ann", made["grant_id"]], env, 2)
    assert "grant" in line
    assert ok_json(["accounts", "grants", "ann"], env)["next_expiry"] is None


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--priority", "101"], "101"),
        (["--source", "gift"], "gift"),
        (["--expires-in", "30 days"], "a whole number and a unit"),
        (["--expires-in", "0d"], "a whole number and a unit"),
        (["--expires-at", "2020-01-01T00:00:00Z"], "in the past"),
        (["--expires-at", "soon"], "ISO 8601"),
        (["--expires-in", "1d", "--expires-at", "2099-01-01"], "not both"),
        (["--description", "a\x00b"], "NUL"),
    ],
)
def test_bad_terms_exit_2_and_write_nothing(
    env: dict[str, str],  # noqa: F811
    args: list[str],
    words: str,
) -> None:
    ok(["accounts", "create", "bob", "--tier", "free"], env)
    done = invoke(["accounts", "grant", "bob", "5", *args], env)
    assert done.code == 2, (done.stdout, done.stderr)
    assert words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    listed = ok_json(["accounts", "grants", "bob"], env)
    assert [g["id"] for g in listed["grants"]] == ["monthly"]
    assert ok_json(["accounts", "show", "bob"], env)["balance"] == 100


def test_durations() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration("45s") == timedelta(seconds=45)
