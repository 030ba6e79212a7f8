"""`quotagate keys create|list|revoke`, as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.servers import free_port


def cli(database_url: str, *args: str, redis_url: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUOTAGATE_DATABASE_URL": database_url}
    if redis_url:
        env["QUOTAGATE_REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "quotagate.cli.main", "keys", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def test_create_list_revoke(migrated_database_url: str, redis_url: str) -> None:
    made = cli(
        migrated_database_url,
        "create",
        "--name",
        "ci",
        "--scope",
        "service",
        "--scope",
        "read",
        "--json",
        redis_url=redis_url,
    )
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["scopes"] == ["read", "service"] and key["key"].startswith(f"qg_{key['id']}_")
    listed = json.loads(cli(migrated_database_url, "list", "--json").stdout)
    row = next(r for r in listed if r["id"] == key["id"])
    assert row["revoked_at"] is None and "key" not in row
    assert key["key"] not in cli(migrated_database_url, "list").stdout
    text = cli(migrated_database_url, "create", "--name", "human", "--scope", "hook")
    assert text.returncode == 0 and text.stdout.splitlines()[1].startswith("qg_")
    revoked = cli(migrated_database_url, "revoke", key["id"], redis_url=redis_url)
    assert revoked.returncode == 0 and key["id"] in revoked.stdout
    listed = json.loads(cli(migrated_database_url, "list", "--json").stdout)
    assert next(r for r in listed if r["id"] == key["id"])["revoked_at"] is not None


def test_errors_are_one_sentence(migrated_database_url: str) -> None:
    r = cli(migrated_database_url, "revoke", "ffffffffffffffff")
    assert r.returncode == 2 and r.stderr.strip() == "error: no API key with id 'ffffffffffffffff'"
    r = cli(migrated_database_url, "create", "--name", "x", "--scope", "root")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = cli(f"postgresql://postgres@127.0.0.1:{free_port()}/x", "list")
    assert (
        r.returncode == 3
        and "Traceback" not in r.stderr
        and r.stderr.startswith("error: PostgreSQL at")
    )
