"""`quotagate bench --cluster`: the hot path on a Redis Cluster of 3 masters, next to one Redis.

Both are the benchmark's own, started here and removed afterwards: the embedded Valkey of
`quotagate up` on free loopback ports, in a temporary directory. One standalone server, and a
cluster of MASTERS masters (:class:`~quotagate.embedded.cluster.EmbeddedCluster`) with its
standalone server for the queues. On each, with a stage of its own (key prefix, database,
accounts), the same rows are measured:

  standalone/engine/in-process, cluster/engine/in-process
      ``CreditEngine.consume`` on the hot account from concurrent tasks, no HTTP
  standalone/hook/hot|spread, cluster/hook/hot|spread
      ``GET /v1/authz`` through `quotagate serve`, one account or the spread accounts

Each cluster row's baseline is the same row on the standalone server: its ratio is
cluster / standalone. Around every row each node's INFO is read (``used_cpu_sys`` +
``used_cpu_user``, FCALL's commandstats) and the outbox entries of the partitions it
serves are counted: per master, what a charge costs it, and in all, what a charge costs
Redis. The gateway's CPU per request (and the engine's per call) shows the routing's cost
in the client: a slot computed per call, one batch per master instead of one.

The spread accounts must reach every master, or the cluster rows would measure fewer
masters than they say: their distribution is counted, printed, and checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from redis.asyncio import Redis, RedisCluster

from quotagate.bench import engine_load, redis_cpu
from quotagate.bench.load import Accounts
from quotagate.bench.report import NodeLoad, Row
from quotagate.bench.servers import ServeOptions
from quotagate.bench.stage import HOT, Stage, spread_accounts
from quotagate.embedded.cluster import EmbeddedCluster
from quotagate.embedded.datadir import DataDir
from quotagate.embedded.process import stop_all
from quotagate.embedded.valkey import EmbeddedValkey
from quotagate.engine import CreditEngine
from quotagate.engine.connection import node_client
from quotagate.engine.routing import ClusterScriptRunner

if TYPE_CHECKING:
    from quotagate.bench.runner import Run
    from quotagate.bench.scenarios import Progress

MASTERS = 3
"""Masters of the benchmark's cluster: Redis Cluster's own minimum."""

BACKENDS = ("standalone", "cluster")
"""Row prefixes, in the order they are measured."""


@dataclass(frozen=True, slots=True)
class Servers:
    """Where the benchmark's own Redis servers listen."""

    standalone_url: str
    cluster_url: str
    queue_url: str
    """The cluster's standalone server for the queues."""
    directory: Path
    """Where they keep their data (removed with them)."""


@contextlib.contextmanager
def embedded_servers() -> Iterator[Servers]:
    """A standalone Valkey and a cluster of MASTERS, until the block ends; then every server
    is stopped and its directory removed (also when a start failed half-way)."""
    directory = Path(tempfile.mkdtemp(prefix="qgbench-cluster-"))
    data_dir = DataDir(directory)
    data_dir.create()
    cluster = EmbeddedCluster(data_dir, MASTERS)
    standalone = EmbeddedValkey(data_dir, name="standalone")
    servers = [*cluster.nodes, cluster.queue, standalone]
    try:
        cluster.start()
        standalone.start()
        yield Servers(standalone.url, cluster.url, cluster.queue_url, directory)
    finally:
        stop_all([s.child for s in servers if s.child is not None])
        shutil.rmtree(directory, ignore_errors=True)


async def measure(run: Run, progress: Progress) -> None:
    """Start the servers, measure the rows on each, take everything down."""
    with embedded_servers() as servers:
        progress(
            f"started a standalone Valkey and a Redis Cluster of {MASTERS} masters "
            f"(in {servers.directory})"
        )
        for backend, url, queue_url in (
            ("standalone", servers.standalone_url, None),
            ("cluster", servers.cluster_url, servers.queue_url),
        ):
            stage = Stage(url, run.stage.server_database_url, queue_url=queue_url)
            try:
                await stage.open()
                await _measure_on(run, stage, backend, progress)
            finally:
                await stage.close()


async def _measure_on(run: Run, stage: Stage, backend: str, progress: Progress) -> None:
    from quotagate.bench import gateway
    from quotagate.bench.scenarios import hook_load

    engine = stage.engine
    assert engine is not None
    o = run.options
    spread = spread_accounts(o.spread_accounts)
    progress(
        f"opening {spread.count + 1} accounts on the {backend} Redis "
        f"(key prefix {stage.prefix}, database {stage.database})"
    )
    await stage.create_accounts(HOT)
    await stage.create_accounts(spread)
    await stage.clear_outboxes()
    masters = await engine.partition_masters()
    nodes = _node_clients(engine, stage.redis_url)
    try:
        if masters is not None:
            run.report.spread_per_master = spread_over_masters(engine, spread, masters, nodes)
        name = f"{backend}/engine/in-process"
        progress(f"measuring {name}")
        window = _Window(run, engine, nodes, masters)
        await window.open()
        result = await engine_load.engine_load(
            engine, HOT.stem, duration_s=o.duration_s, concurrency=o.concurrency,
            warmup_s=o.warmup_s,
        )  # fmt: skip
        await window.close(run.add(name, result, _baseline(backend, "engine/in-process")))
        await stage.clear_outboxes()
        keys = await asyncio.to_thread(gateway.prepare, stage)
        with gateway.serving_gateway(stage, ServeOptions(o.workers)) as app:
            for variant, accounts in (("hook/hot", HOT), ("hook/spread", spread)):
                name = f"{backend}/{variant}"
                progress(f"measuring {name}")
                await window.open()
                load = hook_load(accounts, keys.hook)
                base = _baseline(backend, variant)
                await window.close(await asyncio.to_thread(run.http, name, load, app, base))
                await stage.clear_outboxes()
    finally:
        for client in nodes.values():
            if client is not engine.redis:
                await client.aclose()


def _baseline(backend: str, variant: str) -> str | None:
    return f"standalone/{variant}" if backend == "cluster" else None


class _Window:
    """The nodes' counters around one row, and what they say of it once it is measured."""

    def __init__(
        self,
        run: Run,
        engine: CreditEngine,
        nodes: dict[str, Redis],
        masters: dict[int, str] | None,
    ) -> None:
        self.run, self.engine, self.nodes, self.masters = run, engine, nodes, masters
        self.before: dict[str, redis_cpu.NodeSnapshot] = {}
        self.balance = 0

    async def open(self) -> None:
        self.balance = (await self.engine.get_account(HOT.stem)).balance
        self.before = await redis_cpu.node_snapshots(self.engine, self.nodes, self.masters)

    async def close(self, row: Row) -> None:
        after = await redis_cpu.node_snapshots(self.engine, self.nodes, self.masters)
        deltas = {node: after[node].since(self.before[node]) for node in self.nodes}
        fill_row(row, deltas)
        self.run.report.nodes.extend(node_loads(row.name, deltas))
        charged = self.balance - (await self.engine.get_account(HOT.stem)).balance
        one_account = "/hot" in row.name or "/engine/" in row.name
        if one_account and charged < row.count:
            row.note = f"only {charged} credits charged for {row.count} answers"


def fill_row(row: Row, deltas: dict[str, redis_cpu.NodeSnapshot]) -> None:
    """The row's Redis figures per charge, every node's summed."""
    charges = sum(d.entries for d in deltas.values())
    calls = sum(d.calls for d in deltas.values())
    if charges <= 0 or calls <= 0:
        return
    row.redis_cpu_us = sum(d.cpu_s for d in deltas.values()) / charges * 1e6
    usec = sum(d.usec for d in deltas.values())
    row.redis_us, row.redis_us_per_call = usec / charges, usec / calls


def node_loads(row: str, deltas: dict[str, redis_cpu.NodeSnapshot]) -> list[NodeLoad]:
    total = sum(d.entries for d in deltas.values())
    return [
        NodeLoad(
            row=row,
            node=node,
            charges=d.entries,
            share=d.entries / total if total > 0 else 0.0,
            cpu_ms=d.cpu_s * 1e3,
            cpu_us=d.cpu_s / d.entries * 1e6 if d.entries > 0 else None,
            fcall_us=d.usec / d.entries if d.entries > 0 else None,
        )
        for node, d in sorted(deltas.items())
    ]


def spread_over_masters(
    engine: CreditEngine, spread: Accounts, masters: dict[int, str], nodes: dict[str, Redis]
) -> dict[str, int]:
    """How many spread accounts each master holds; every master must hold some."""
    counts = dict.fromkeys(nodes, 0)
    for account in spread.all():
        master = masters[engine.keys.partition_of(account)]
        counts[master] = counts.get(master, 0) + 1
    idle = sorted(m for m, n in counts.items() if n == 0)
    if idle:
        raise RuntimeError(
            f"no spread account is on the master(s) {', '.join(idle)}: "
            f"use more accounts (--accounts) or more partitions"
        )
    return counts


def _node_clients(engine: CreditEngine, url: str) -> dict[str, Redis]:
    """A client per node (``host:port``): each master of a cluster, or the one server."""
    runner = engine.runner
    if isinstance(runner, ClusterScriptRunner):
        cluster = engine.redis
        assert isinstance(cluster, RedisCluster)
        return {address: node_client(cluster, address) for address in runner.masters}
    parts = urlsplit(url)
    return {f"{parts.hostname}:{parts.port or 6379}": engine.redis}
