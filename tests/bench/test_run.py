"""`quotagate bench` end to end, each scenario for half a second (the shortest it allows): the
report's shape, numbers produced for every row, nothing failed, and nothing left behind. Speed
is not asserted here: the suite shares the machine with other work; `quotagate bench` is the
measurement."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from typing import Any

import asyncpg
import redis

from quotagate.bench.nginx import nginx_binary

EXPECTED_ROWS = {
    "http": [
        "http/floor", "http/bare", "hook/hot", "hook/grants-1", "hook/grants-2", "hook/member",
        "hook/spread", "hook/reserve", "hook/shadow", "consume/hot", "consume/spread",
    ],
    "postgres": ["postgres/hot", "postgres/spread"],
    "engine": [
        "engine/in-process", "engine/unbatched", "engine/grants-2", "engine/grants-20", "engine/member"
    ]
    + (["redis-benchmark"] if shutil.which("redis-benchmark") else []),
    "batch": (["redis-benchmark/pipelined"] if shutil.which("redis-benchmark") else [])
    + ["batch/spread"],
    "nginx": ["nginx/alone", "nginx/hook"] if nginx_binary() else [],
    "flush": ["flush/worker", "flush/copy"],
}  # fmt: skip
CHARGE_ROWS = {"batch/spread", "redis-benchmark/pipelined"}
"""Rows counting charges, not requests."""
LATENCY_FREE = {"flush/worker", "flush/copy"}
"""Rows that count rows moved by one batch job: a rate, no latency."""
ACCOUNTS = 200
"""Spread accounts: enough that the spread rows spread, few enough to open quickly."""
FLUSH_ROWS = 1000
"""The fewest rows `quotagate bench --rows` takes."""


def _bench(redis_url: str, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUOTAGATE_REDIS_URL": redis_url, "QUOTAGATE_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "quotagate.cli.main", "bench", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


async def test_every_scenario_produces_numbers_and_cleans_up(
    redis_url: str, database_url: str
) -> None:
    groups = list(EXPECTED_ROWS)
    # No warm-up, one gateway worker, few accounts and the fewest flush rows: every row is
    # still produced the way a full run produces it, in a fraction of the time.
    proc = _bench(
        redis_url, database_url, "--json", "--duration", "0.5", "--warmup", "0",
        "--accounts", str(ACCOUNTS), "--concurrency", "8", "--rows", str(FLUSH_ROWS),
        "--workers", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report) == {
        "conditions", "results", "targets", "memory", "nodes", "spread_per_master",
    }  # fmt: skip
    assert (report["nodes"], report["spread_per_master"]) == ([], {})  # the cluster rows' only
    memory = report["memory"]
    assert set(memory) == {
        "hook_record_bytes", "hook_request_used_memory_bytes", "api_record_bytes",
        "api_charge_used_memory_bytes", "outbox_entry_bytes", "hook_outbox_entry_bytes",
    }  # fmt: skip
    # A record is a key of its own: about 200 bytes; an outbox entry about as much again.
    assert 100 < memory["hook_record_bytes"] < 400, memory
    assert 100 < memory["outbox_entry_bytes"] < 400, memory
    names = [r["name"] for r in report["results"]]
    assert names == [n for g in groups for n in EXPECTED_ROWS[g]]
    for row in report["results"]:
        assert row["rate"] > 0, row
        assert row["count"] > 0, row
        assert row["errors"] == 0, row
        if row["name"] in LATENCY_FREE:
            assert row["unit"] == "rows/s"
            continue
        assert row["p50_ms"] is not None and 0 < row["p50_ms"] <= row["p99_ms"], row
        assert row["concurrency"] == 8
        assert row["unit"] == ("charges/s" if row["name"] in CHARGE_ROWS else "req/s"), row
        if row["name"] in CHARGE_ROWS or row["name"] == "nginx/hook":
            continue  # their notes say how they ran (checked below)
        # A note on an HTTP or engine row says that fewer credits were charged than answered.
        assert row["note"] in ("", "same FCALL of consume.lua"), row
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name["flush/worker"]["count"] == FLUSH_ROWS
    for name in EXPECTED_ROWS["http"] + EXPECTED_ROWS["postgres"]:
        assert by_name[name]["server_cpu_us"] > 0, name
    for name in ("hook/spread", "consume/hot"):
        assert by_name[name]["baseline"] == "http/floor"
    assert {t["name"]: t for t in report["targets"]}["flush vs bare COPY"]["value"] > 0
    engine = by_name["engine/in-process"]
    assert engine["baseline"] == "redis-benchmark"
    if "redis-benchmark" in by_name:
        assert engine["ratio"] == engine["rate"] / by_name["redis-benchmark"]["rate"]
        target = {t["name"]: t for t in report["targets"]}["engine vs redis-benchmark"]
        assert target["value"] == engine["ratio"]
        assert target["met"] is (engine["ratio"] >= 0.6)
    _check_batch_and_nginx_rows(by_name, {t["name"]: t for t in report["targets"]})
    conditions = report["conditions"]
    assert conditions["concurrency"] == 8
    assert conditions["generator"] in ("wrk", "pyload")

    # Nothing left behind: no key starting with the run's prefix (its own keyspace, or one it
    # made beside it), no database.
    client = redis.Redis.from_url(redis_url)
    assert list(client.scan_iter(match=f"{conditions['key_prefix']}*", count=1000)) == []
    client.close()
    conn = await asyncpg.connect(database_url)
    try:
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname = $1", conditions["database"]
        )
    finally:
        await conn.close()
    assert left == 0


def _check_batch_and_nginx_rows(by_name: dict[str, Any], targets: dict[str, Any]) -> None:
    batch = by_name["batch/spread"]
    assert batch["note"] == "1000 charges a request, 8 in flight"
    assert batch["server_cpu_us"] > 0
    assert batch["baseline"] == "redis-benchmark/pipelined"
    if "redis-benchmark/pipelined" in by_name:
        pipelined = by_name["redis-benchmark/pipelined"]
        assert pipelined["note"] == f"-P 16 -r {ACCOUNTS}, same FCALL of consume.lua", pipelined
        assert batch["ratio"] == batch["rate"] / pipelined["rate"]
        assert targets["batch vs pipelined script"]["value"] == batch["ratio"]
    if "nginx/hook" in by_name:
        hook, alone = by_name["nginx/hook"], by_name["nginx/alone"]
        assert hook["baseline"] == "nginx/alone"
        assert re.fullmatch(r"CPU per request: nginx \d+ us, gateway \d+ us", hook["note"])
        assert hook["server_cpu_us"] > alone["server_cpu_us"] > 0
        assert targets["nginx with the hook vs nginx alone"]["value"] == hook["ratio"]
        assert targets["nginx p99 with the hook vs alone"]["value"] == (
            hook["p99_ms"] / alone["p99_ms"]
        )


def test_table_output_and_a_clear_error(redis_url: str, database_url: str) -> None:
    proc = _bench(
        redis_url, database_url, "--duration", "0.5", "--warmup", "0", "--accounts", "10",
        "--concurrency", "2", "--only", "engine", "--rounds", "3",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("round ") == 3
    header, *lines = proc.stdout.splitlines()
    assert header.split()[:4] == ["SCENARIO", "RATE", "UNIT", "P50_MS"]
    assert any(line.startswith("engine/in-process") for line in lines)
    assert "rounds=3" in lines[-1]
    assert any("engine vs redis-benchmark" in line for line in lines)

    bad = _bench("redis://127.0.0.1:1/0", database_url, "--duration", "0.5", "--only", "engine")
    assert bad.returncode == 3  # a backend that does not answer, as in every command
    assert "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "error: Redis at redis://127.0.0.1:1/0 (from QUOTAGATE_REDIS_URL) did not answer: "
        "Error 111 connecting to 127.0.0.1:1. Connection refused."
    ]


def test_a_stopped_run_still_takes_its_stage_down(redis_url: str, database_url: str) -> None:
    env = {**os.environ, "QUOTAGATE_REDIS_URL": redis_url, "QUOTAGATE_DATABASE_URL": database_url}
    args = [
        sys.executable, "-m", "quotagate.cli.main", "bench", "--only", "engine",
        "--duration", "30", "--accounts", "10", "--concurrency", "2",
    ]  # fmt: skip
    with subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:  # wait until the stage is up and a measurement runs
            lines.append(line)
            if line.startswith("measuring"):
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 143, rest
    prefix, database = re.findall(r"key prefix (\S+), database (\S+)\)", "".join(lines))[0]
    client = redis.Redis.from_url(redis_url)
    assert list(client.scan_iter(match=f"{prefix}*", count=1000)) == []
    client.close()

    async def databases_left() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            sql = "SELECT count(*) FROM pg_database WHERE datname = $1"
            return int(await conn.fetchval(sql, database))
        finally:
            await conn.close()

    assert asyncio.run(databases_left()) == 0
