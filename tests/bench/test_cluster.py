"""`quotagate bench --cluster` end to end, each row for half a second: the standalone and the
cluster rows with numbers, each cluster row compared with its standalone one, every node's
share of the charges, the spread accounts on every master, and nothing left behind. Speed is
not asserted: `quotagate bench --cluster` is the measurement."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import asyncpg
import pytest
from tests.bench.test_run import _bench

from quotagate.embedded.valkey import valkey_binary
from quotagate.errors import ConfigError

ROWS = ["engine/in-process", "hook/hot", "hook/spread"]
MASTERS = 3
ACCOUNTS = 300


def _valkey_can_run_cluster() -> bool:
    try:
        valkey_binary()
    except ConfigError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _valkey_can_run_cluster(), reason="the embedded Valkey (quotagate[embedded]) is needed"
)


def test_cluster_rows_next_to_standalone_ones(redis_url: str, database_url: str) -> None:
    proc = _bench(
        redis_url, database_url, "--cluster", "--json", "--duration", "0.5", "--warmup", "0",
        "--accounts", str(ACCOUNTS), "--concurrency", "8", "--workers", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    rows = {r["name"]: r for r in report["results"]}
    assert list(rows) == [f"{b}/{r}" for b in ("standalone", "cluster") for r in ROWS]
    for row in rows.values():
        assert row["rate"] > 0 and row["count"] > 0 and row["errors"] == 0, row
        assert row["p50_ms"] is not None and 0 < row["p50_ms"] <= row["p99_ms"], row
        assert row["server_cpu_us"] > 0, row  # the gateway's per request, the engine's per call
        assert row["redis_cpu_us"] > 0 and row["redis_us"] > 0, row
        # Redis's whole CPU time covers the scripts' own and more (reading, replying).
        assert row["redis_cpu_us"] > row["redis_us"] * 0.5, row
        assert row["note"] == "", row  # every answer was a charge
    for name in ROWS:
        cluster, standalone = rows[f"cluster/{name}"], rows[f"standalone/{name}"]
        assert cluster["baseline"] == f"standalone/{name}"
        assert cluster["ratio"] == cluster["rate"] / standalone["rate"]
        assert standalone["baseline"] is None

    nodes: dict[str, list[dict[str, object]]] = {}
    for node in report["nodes"]:
        nodes.setdefault(str(node["row"]), []).append(node)
    assert set(nodes) == set(rows)
    for name, loads in nodes.items():
        assert len(loads) == (MASTERS if name.startswith("cluster/") else 1), name
        assert sum(float(str(n["share"])) for n in loads) == pytest.approx(1.0)
    # One account is one partition, one master; the spread accounts reach all three.
    for name in ("cluster/engine/in-process", "cluster/hook/hot"):
        assert sorted(float(str(n["share"])) for n in nodes[name]) == [0.0, 0.0, 1.0], name
    spread = nodes["cluster/hook/spread"]
    assert all(int(str(n["charges"])) > 0 and n["cpu_us"] for n in spread), spread
    per_master = report["spread_per_master"]
    assert len(per_master) == MASTERS and sum(per_master.values()) == ACCOUNTS
    assert set(per_master) == {n["node"] for n in spread}
    assert all(n > ACCOUNTS / MASTERS / 2 for n in per_master.values()), per_master

    # Nothing left: the servers' directory, and the databases of both stages.
    directory = re.findall(r"Redis Cluster of 3 masters \(in (\S+)\)", proc.stderr)[0]
    assert not Path(directory).exists()
    databases = re.findall(r"key prefix \S+, database (\S+)\)", proc.stderr)
    assert len(databases) == 3  # the run's own, the standalone's and the cluster's
    assert asyncio.run(_databases_left(database_url, databases)) == 0


async def _databases_left(database_url: str, names: list[str]) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        sql = "SELECT count(*) FROM pg_database WHERE datname = ANY($1::text[])"
        return int(await conn.fetchval(sql, names))
    finally:
        await conn.close()
