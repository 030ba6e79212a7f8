"""Redis CPU per charge: what ``INFO commandstats`` says the scripts cost Redis's one core.

Redis counts, per command, the calls it served and the microseconds it spent in them
(``cmdstat_fcall:calls=...,usec=...``). Two reads around a measured window give the calls
and the microseconds of that window; divided by the charges made in it, the Redis time of one
charge. The engine sends several charges of one account as one call, so the time per call and
the time per charge differ: both are kept. Charges are counted as the outbox entries the
window added (the benchmark empties the outboxes between rows and runs no flush meanwhile).
Other clients of the same Redis add their calls to the counters, so the figure is exact only
on a Redis of the benchmark's own.

:func:`node_snapshots` reads the same per node, with the server's whole CPU time (INFO cpu),
for the cluster rows (`quotagate bench --cluster`), whose servers are the benchmark's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from quotagate.engine import CreditEngine

COMMAND = "fcall"
"""The command every script call is: the engine never sends EVAL or EVALSHA."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """FCALL's counters and the outbox entries at one moment, or the change between two."""

    calls: int
    usec: int
    entries: int
    """Entries in the outboxes: one per charge (a refused charge appends none)."""

    def since(self, earlier: Snapshot) -> Snapshot:
        return Snapshot(
            self.calls - earlier.calls, self.usec - earlier.usec, self.entries - earlier.entries
        )

    @property
    def usec_per_call(self) -> float | None:
        return self.usec / self.calls if self.calls > 0 else None

    @property
    def usec_per_charge(self) -> float | None:
        """Script microseconds per charge made (refused calls' time included)."""
        return self.usec / self.entries if self.entries > 0 and self.calls > 0 else None


async def snapshot(engine: CreditEngine) -> Snapshot:
    """The counters now. Counting the entries, not the answers, includes a warm-up's charges
    in both the time and the count, so a window may start before the warm-up."""
    calls, usec = await script_stats(engine.redis)
    async with engine.redis.pipeline(transaction=False) as pipe:
        for partition in range(engine.config.partitions):
            pipe.xlen(engine.keys.outbox(partition))
        lengths = await pipe.execute()
    return Snapshot(calls, usec, sum(int(n) for n in lengths))


async def script_stats(redis: Redis) -> tuple[int, int]:
    """FCALL's calls and microseconds so far (zeros before the first call)."""
    info: dict[str, Any] = await redis.info("commandstats")
    return parse_stats(info, COMMAND)


def parse_stats(info: dict[str, Any], command: str) -> tuple[int, int]:
    """A command's calls and microseconds from a parsed ``INFO commandstats`` reply."""
    entry = info.get(f"cmdstat_{command}")
    if not isinstance(entry, dict):
        return 0, 0
    return int(entry.get("calls", 0)), int(entry.get("usec", 0))


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """One Redis node's CPU time, FCALL counters and outbox entries at one moment, or the
    change between two. The CPU time is the whole server's (``used_cpu_sys`` +
    ``used_cpu_user`` of ``INFO cpu``): the scripts, and the reading, parsing and replying
    around them that commandstats does not count."""

    cpu_s: float
    calls: int
    usec: int
    entries: int
    """Entries in the outboxes of the partitions this node serves."""

    def since(self, earlier: NodeSnapshot) -> NodeSnapshot:
        return NodeSnapshot(
            self.cpu_s - earlier.cpu_s,
            self.calls - earlier.calls,
            self.usec - earlier.usec,
            self.entries - earlier.entries,
        )


async def node_snapshots(
    engine: CreditEngine, nodes: Mapping[str, Redis], masters: Mapping[int, str] | None
) -> dict[str, NodeSnapshot]:
    """Every node's counters now. ``nodes``: a client per node (``host:port``); ``masters``:
    each partition's node (None: one node holds them all)."""
    async with engine.redis.pipeline(transaction=False) as pipe:
        for partition in range(engine.config.partitions):
            pipe.xlen(engine.keys.outbox(partition))
        lengths = await pipe.execute()
    only = next(iter(nodes))
    entries = dict.fromkeys(nodes, 0)
    for partition, length in enumerate(lengths):
        node = only if masters is None else masters[partition]
        entries[node] = entries.get(node, 0) + int(length)
    out = {}
    for address, client in nodes.items():
        cpu: dict[str, Any] = await client.info("cpu")
        calls, usec = await script_stats(client)
        seconds = float(cpu.get("used_cpu_sys", 0)) + float(cpu.get("used_cpu_user", 0))
        out[address] = NodeSnapshot(seconds, calls, usec, entries[address])
    return out
