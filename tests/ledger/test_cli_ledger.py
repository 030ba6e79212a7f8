"""The ledger commands, run as an operator runs them: migrate, worker, flush, status."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from rq import Queue
from tests.jobs.processes import quotagate_command
from tests.ledger.support import assert_books_balance, config_text
from tests.ledger.test_quarantine import charge_as_an_older_gateway
from tests.support.servers import free_port, redis_process

from quotagate.config import parse_config
from quotagate.engine import CreditEngine
from quotagate.jobs import queues
from quotagate.jobs.flush import enqueue_due_flushes
from quotagate.ledger import Ledger
from quotagate.ledger.migrate import head_revision

Acct = Callable[[str], str]


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*quotagate_command(), *args], env={**os.environ, **env}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


def test_migrate_brings_an_empty_database_to_the_head_twice_over(empty_database_url: str) -> None:
    for _ in range(2):
        done = run("migrate", QUOTAGATE_DATABASE_URL=empty_database_url)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"ledger database at revision {head_revision()} (current)"


def test_the_worker_refuses_a_database_that_is_behind(empty_database_url: str) -> None:
    done = run("worker", "--burst", QUOTAGATE_DATABASE_URL=empty_database_url)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: the ledger database has no schema yet: run `quotagate migrate`"
    )


def test_commands_say_in_one_line_when_postgres_is_down() -> None:
    down = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/x"
    for command in (["worker", "--burst"], ["flush"], ["migrate"]):
        done = run(*command, QUOTAGATE_DATABASE_URL=down)
        assert done.returncode == 3, (command, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "secret" not in lines[0]


async def test_status_and_flush_report_exact_counts(
    lengine: CreditEngine, ledger: Ledger, acct: Acct, ledger_url: str, key_prefix: str,
    redis_url: str, queue_url: str, config_file: str,
) -> None:  # fmt: skip
    accounts = [acct(f"cli{i}") for i in range(9)]
    for a in accounts:
        await lengine.upsert_account(a)
    env = {
        "QUOTAGATE_REDIS_URL": redis_url, "QUOTAGATE_QUEUE_URL": queue_url, "QUOTAGATE_DATABASE_URL": ledger_url,
        "QUOTAGATE_KEY_PREFIX": key_prefix, "QUOTAGATE_CONFIG": config_file,
    }  # fmt: skip
    status = json.loads(run("status", "--json", **env).stdout)
    assert status["waiting"] == 18 and status["database"] == "ok"
    assert sum(p["waiting"] for p in status["partitions"]) == 18

    done = run("flush", "--json", **env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["inserted"], report["duplicates"], report["events"]) == (9, 0, 9)
    assert report["deleted"] == 18

    status = json.loads(run("status", "--json", **env).stdout)
    assert status["waiting"] == 0 and status["oldest_age_seconds"] is None
    flushed = {lengine.keys.partition_of(a) for a in accounts}
    for p in status["partitions"]:
        if p["partition"] in flushed:
            assert 0 <= p["last_flush_seconds_ago"] < 60
    human = run("status", **env)
    assert human.stdout.strip().endswith("0 entries waiting in 8 partitions")
    await assert_books_balance(lengine, ledger, accounts)


async def test_status_counts_partitions_and_entries_per_master(
    lengine: CreditEngine, acct: Acct, ledger_url: str, key_prefix: str, redis_url: str,
    queue_url: str, config_file: str, redis_backend: str,
) -> None:  # fmt: skip
    for i in range(9):
        await lengine.upsert_account(acct(f"m{i}"))
    env = {
        "QUOTAGATE_REDIS_URL": redis_url, "QUOTAGATE_QUEUE_URL": queue_url,
        "QUOTAGATE_DATABASE_URL": ledger_url, "QUOTAGATE_KEY_PREFIX": key_prefix,
        "QUOTAGATE_CONFIG": config_file,
    }  # fmt: skip
    status = json.loads(run("status", "--json", **env).stdout)
    human = run("status", **env)
    if redis_backend == "standalone":
        assert status["masters"] is None
        assert "warning" not in human.stderr
        return
    owners = await lengine.partition_masters()
    assert owners is not None
    expected = Counter(owners.values())
    masters = status["masters"]
    assert {m["master"]: m["partitions"] for m in masters} == expected
    assert sum(m["waiting"] for m in masters) == 18
    assert human.stderr.strip().startswith(
        f"warning: 8 partitions over {len(expected)} masters is fewer than 8 per master"
    )


async def test_a_burst_worker_runs_the_queued_flushes(
    ledger: Ledger, ledger_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(config_text(8))
    with redis_process() as server:
        engine = CreditEngine.from_url(server.url, parse_config(config_text(8)), prefix="burst")
        conn = redis.Redis.from_url(server.url)
        try:
            await engine.initialize()
            accounts = [f"burst-{tmp_path.name}-{i}" for i in range(12)]
            for a in accounts:
                await engine.upsert_account(a)
                await engine.consume(a, "api_call", 4)
            queue = Queue(queues.flush_queue_name("burst"), connection=conn)
            assert await enqueue_due_flushes(engine, queue, "burst") > 1
            done = run(
                "worker", "--burst", QUOTAGATE_REDIS_URL=server.url,
                QUOTAGATE_DATABASE_URL=ledger_url, QUOTAGATE_KEY_PREFIX="burst",
                QUOTAGATE_CONFIG=str(config),
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            # Every record, RQ's too, is one JSON line on stderr (the default log format).
            lines = [json.loads(line) for line in done.stderr.splitlines()]
            assert {"rq.worker"} <= {line["logger"] for line in lines}
            assert all(list(line)[:4] == ["time", "level", "logger", "message"] for line in lines)
            assert queue.count == 0
            for p in range(8):
                assert await engine.redis.xlen(engine.keys.outbox(p)) == 0
            await assert_books_balance(engine, ledger, accounts)
        finally:
            await engine.aclose()
            conn.close()


async def test_a_partition_count_other_than_redis_holds_is_refused(
    make_engine: Callable[..., Any], ledger_url: str, key_prefix: str, redis_url: str, queue_url: str,
    config_file: str,
) -> None:  # fmt: skip
    await make_engine()  # the shipped config: 64 partitions, written into Redis
    env = {
        "QUOTAGATE_REDIS_URL": redis_url, "QUOTAGATE_QUEUE_URL": queue_url, "QUOTAGATE_DATABASE_URL": ledger_url,
        "QUOTAGATE_KEY_PREFIX": key_prefix, "QUOTAGATE_CONFIG": config_file,  # 8 partitions
    }  # fmt: skip
    for command in (["flush"], ["worker", "--burst"]):
        done = run(*command, **env)
        assert done.returncode == 2, done.stderr
        assert "laid out in 64 partitions; use that number" in done.stderr


async def test_flush_goes_past_an_entry_postgres_refuses_and_status_counts_it(
    lengine: CreditEngine, own_ledger: Ledger, own_ledger_url: str, acct: Acct,
    key_prefix: str, redis_url: str, queue_url: str, config_file: str,
) -> None:  # fmt: skip
    a, b = acct("cli-nul"), acct("cli-fine")
    for account_id in (a, b):
        await lengine.upsert_account(account_id)
    await charge_as_an_older_gateway(lengine, a, b"with a NUL \x00", b"")
    env = {
        "QUOTAGATE_REDIS_URL": redis_url, "QUOTAGATE_QUEUE_URL": queue_url, "QUOTAGATE_DATABASE_URL": own_ledger_url,
        "QUOTAGATE_KEY_PREFIX": key_prefix, "QUOTAGATE_CONFIG": config_file,
    }  # fmt: skip
    done = run("flush", "--json", **env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["inserted"], report["quarantined"], report["deleted"]) == (3, 1, 5)
    assert "ledger_quarantine" in done.stderr  # the alert, logged at ERROR
    status = json.loads(run("status", "--json", **env).stdout)
    assert (status["waiting"], status["quarantined"]) == (0, 1)
    human = run("status", **env).stdout.splitlines()  # after the masters of a cluster
    assert human[-2:] == ["1 entries in ledger_quarantine", "0 entries waiting in 8 partitions"]
    await assert_books_balance(lengine, own_ledger, [a, b])
