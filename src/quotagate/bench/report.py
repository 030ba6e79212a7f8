"""What a benchmark run found: measured rows, the targets they are held to, and how it printed.

A row is one scenario run for a fixed time at a fixed concurrency. Its ratio is its rate over the
rate of its baseline row from the same run; targets compare two rows of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from quotagate.cli.output import table


@dataclass(slots=True)
class Row:
    """One scenario's measurement."""

    name: str
    """Scenario and variant, e.g. ``hook/hot``."""
    rate: float
    """Requests (or rows) per second over the measured window."""
    unit: str
    """``req/s`` or ``rows/s``."""
    count: int
    """Requests (or rows) completed in the measured window."""
    errors: int
    """Requests that failed or answered with an unexpected status."""
    duration_s: float
    concurrency: int
    generator: str
    """What produced the load: ``wrk``, ``pyload``, ``redis-benchmark``, ``in-process``..."""
    p50_ms: float | None = None
    p99_ms: float | None = None
    baseline: str | None = None
    """The row this one is compared with; ``ratio`` is rate / baseline's rate."""
    ratio: float | None = None
    server_cpu_us: float | None = None
    """CPU time the server (every worker process) spent per request, in microseconds; for
    the engine rows, this process's CPU time per call. Moved far less by a busy machine than
    the rate is."""
    redis_us: float | None = None
    """Redis's own time per charge (FCALL microseconds in ``INFO commandstats`` over the
    window, per charge answered): what one Redis core pays for a charge."""
    redis_us_per_call: float | None = None
    """The same per FCALL call (the engine may send several charges in one call)."""
    redis_cpu_us: float | None = None
    """The Redis servers' whole CPU time per charge (INFO ``used_cpu_sys`` + ``used_cpu_user``,
    summed over every node), measured on servers of the benchmark's own (the cluster rows)."""
    note: str = ""


@dataclass(slots=True)
class NodeLoad:
    """What one Redis node did during one row: the charges it made and its CPU time."""

    row: str
    node: str
    """``host:port``."""
    charges: int
    """Outbox entries added to the partitions this node serves."""
    share: float
    """This node's part of the row's charges (0 to 1)."""
    cpu_ms: float
    """The server's CPU time over the row (INFO cpu), charges or not."""
    cpu_us: float | None
    """``cpu_ms`` per charge this node made; None when it made none."""
    fcall_us: float | None
    """FCALL microseconds (INFO commandstats) per charge this node made."""


@dataclass(slots=True)
class Target:
    """A figure of one run that the hot path is held to: a ratio between two rows, or what a
    row or the memory group measured against a bound."""

    name: str
    subject: str
    baseline: str
    metric: str
    """``rate``: subject rate / baseline rate, at least ``bound``;
    ``p99``: subject p99 / baseline p99, at most ``bound``;
    ``cpu``: the subject's gateway CPU per request / the baseline's Redis time per charge
    (``CPU_US`` / ``REDIS_US``), at most ``bound``;
    ``memory``: the memory group's ``subject`` bytes per request x ``rate`` requests/s x
    ``window_s``, in GiB (the steady state of records kept that long), at most ``bound``."""
    bound: float
    value: float | None = None
    met: bool | None = None
    rate: float = 0.0
    """``memory`` only: the request rate of the steady state."""
    window_s: float = 0.0
    """``memory`` only: how long each record is kept."""

    @property
    def at_least(self) -> bool:
        return self.metric == "rate"

    def evaluate(self, rows: dict[str, Row], memory: Mapping[str, float] | None = None) -> None:
        self.value = self._value(rows, memory or {})
        if self.value is not None:
            self.met = self.value >= self.bound if self.at_least else self.value <= self.bound

    def _value(self, rows: dict[str, Row], memory: Mapping[str, float]) -> float | None:
        if self.metric == "memory":
            per_request = memory.get(self.subject)
            if per_request is None:
                return None
            return per_request * self.rate * self.window_s / 2**30
        subject, base = rows.get(self.subject), rows.get(self.baseline)
        if subject is None or base is None:
            return None
        if self.metric == "rate":
            return subject.rate / base.rate if base.rate else None
        if self.metric == "cpu":
            if subject.server_cpu_us is None or not base.redis_us:
                return None
            return subject.server_cpu_us / base.redis_us
        if subject.p99_ms is None or not base.p99_ms:
            return None
        return subject.p99_ms / base.p99_ms

    def measured_by(self, rows: Mapping[str, Row], memory: Mapping[str, float]) -> bool:
        """Whether this run measured what the target reads (another group's says nothing)."""
        if self.metric == "memory":
            return self.subject in memory
        return self.subject in rows or self.baseline in rows

    def describe(self) -> str:
        op = ">=" if self.at_least else "<="
        value = "n/a" if self.value is None else f"{self.value:.2f}"
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[self.met]
        if self.metric == "memory":
            what = f"GiB of {self.subject} x {self.rate:g} req/s x {self.window_s:g} s"
        elif self.metric == "cpu":
            what = f"CPU_US {self.subject} / REDIS_US {self.baseline}"
        else:
            what = f"{self.metric} {self.subject} / {self.baseline}"
        return f"{self.name}: {what} = {value} (target {op} {self.bound:g}) {verdict}"


@dataclass(slots=True)
class Report:
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    conditions: dict[str, Any] = field(default_factory=dict)
    """How the run was made: cores, load average, generator, concurrency, duration, servers."""
    memory: dict[str, float] = field(default_factory=dict)
    """Redis bytes kept per hook request, per API charge with a key, per outbox entry."""
    nodes: list[NodeLoad] = field(default_factory=list)
    """Per Redis node and row, on the benchmark's own servers (the cluster rows)."""
    spread_per_master: dict[str, int] = field(default_factory=dict)
    """How many of the spread accounts each master of the cluster holds."""

    def by_name(self) -> dict[str, Row]:
        return {r.name: r for r in self.rows}

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def finish(self) -> None:
        """Fill each row's ratio and evaluate the targets."""
        rows = self.by_name()
        for row in self.rows:
            base = rows.get(row.baseline) if row.baseline else None
            row.ratio = row.rate / base.rate if base and base.rate else None
        for target in self.targets:
            target.evaluate(rows, self.memory)

    @classmethod
    def median(cls, rounds: Sequence[Report]) -> Report:
        """One report from several rounds of the same rows: each row is its median round (by
        rate), each ratio and target value the median of the rounds' own (each round compares
        rows measured minutes apart, not across rounds)."""
        if len(rounds) == 1:
            return rounds[0]
        last = rounds[-1]
        merged = cls(
            targets=[replace(t) for t in rounds[0].targets],
            memory=last.memory,
            nodes=last.nodes,
            spread_per_master=last.spread_per_master,
        )
        for name in rounds[0].by_name():
            rows = sorted((r.by_name()[name] for r in rounds), key=lambda row: row.rate)
            row = replace(rows[len(rows) // 2])
            row.ratio = _median([x.ratio for x in rows if x.ratio is not None])
            rates = "/".join(str(round(x.rate)) for x in rows)
            row.note = "; ".join(n for n in (row.note, f"rounds {rates}") if n)
            merged.rows.append(row)
        for i, target in enumerate(merged.targets):
            values = [r.targets[i].value for r in rounds]
            target.value = _median([v for v in values if v is not None])
            if target.value is not None:
                high = target.at_least
                target.met = target.value >= target.bound if high else target.value <= target.bound
        return merged

    def as_json(self) -> dict[str, Any]:
        return {
            "conditions": self.conditions,
            "results": [asdict(r) for r in self.rows],
            "targets": [asdict(t) for t in self.targets],
            "memory": self.memory,
            "nodes": [asdict(n) for n in self.nodes],
            "spread_per_master": self.spread_per_master,
        }

    def render(self) -> str:
        lines = [table(_table_rows(self.rows), _COLUMNS)]
        names = self.by_name()
        # A target of two rows this run did not measure (another group's) says nothing.
        targets = [t for t in self.targets if t.measured_by(names, self.memory)]
        if targets:
            lines.append("")
            lines.extend(t.describe() for t in targets)
        if self.memory:
            lines.append("")
            lines.extend(_memory_lines(self.memory))
        if self.spread_per_master:
            lines.append("")
            lines.append(_spread_line(self.spread_per_master))
        if self.nodes:
            lines.append("")
            lines.append("Redis per node (charges it made, CPU from INFO cpu, FCALL time):")
            lines.append(table(_node_rows(self.nodes), _NODE_COLUMNS))
        if self.conditions:
            lines.append("")
            lines.append("conditions: " + ", ".join(f"{k}={v}" for k, v in self.conditions.items()))
        return "\n".join(lines)


_MEMORY_LABELS = {
    "hook_record_bytes": "hook request (X-Request-Id): idempotency record",
    "hook_request_used_memory_bytes": "hook request: used_memory, record and outbox entry",
    "api_record_bytes": "API charge with Idempotency-Key: idempotency record",
    "api_charge_used_memory_bytes": "API charge: used_memory, record and outbox entry",
    "outbox_entry_bytes": "outbox entry of an API charge",
    "hook_outbox_entry_bytes": "outbox entry of a hook charge",
}


def _memory_lines(memory: dict[str, float]) -> list[str]:
    lines = ["Redis bytes kept (MEMORY USAGE and INFO used_memory deltas):"]
    for name, label in _MEMORY_LABELS.items():
        if name in memory:
            lines.append(f"  {label}: {memory[name]:.0f} B")
    return lines


def _spread_line(per_master: dict[str, int]) -> str:
    total = sum(per_master.values()) or 1
    shares = ", ".join(f"{m} {n} ({n / total:.1%})" for m, n in sorted(per_master.items()))
    return f"spread accounts per master: {shares}"


_NODE_COLUMNS = ("scenario", "node", "charges", "share", "cpu_ms", "cpu_us", "fcall_us")


def _node_rows(nodes: Sequence[NodeLoad]) -> list[dict[str, Any]]:
    return [
        {
            "scenario": n.row,
            "node": n.node,
            "charges": n.charges,
            "share": f"{n.share:.0%}",
            "cpu_ms": round(n.cpu_ms),
            "cpu_us": None if n.cpu_us is None else f"{n.cpu_us:.1f}",
            "fcall_us": None if n.fcall_us is None else f"{n.fcall_us:.1f}",
        }
        for n in nodes
    ]


_COLUMNS = (
    "scenario", "rate", "unit", "p50_ms", "p99_ms", "cpu_us", "redis_us", "redis_cpu_us",
    "errors", "baseline", "ratio", "via",
)  # fmt: skip


def _table_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [
        {
            "scenario": r.name,
            "rate": round(r.rate),
            "unit": r.unit,
            "p50_ms": _fmt(r.p50_ms),
            "p99_ms": _fmt(r.p99_ms),
            "cpu_us": None if r.server_cpu_us is None else round(r.server_cpu_us),
            "redis_us": None if r.redis_us is None else f"{r.redis_us:.1f}",
            "redis_cpu_us": None if r.redis_cpu_us is None else f"{r.redis_cpu_us:.1f}",
            "errors": r.errors,
            "baseline": r.baseline,
            "ratio": None if r.ratio is None else f"{r.ratio:.2f}",
            "via": r.generator,
        }
        for r in rows
    ]


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _fmt(ms: float | None) -> str | None:
    return None if ms is None else f"{ms:.2f}"


def run_measurement(
    prog: str,
    options: Mapping[str, int],
    measure: Callable[..., Coroutine[Any, Any, Any]],
    argv: Sequence[str] | None = None,
    *,
    width: int = 32,
) -> None:
    """The command line of a standalone benchmark (``python -m ...``): its integer options
    (``--name``, with their defaults) and ``--json``; runs ``measure(redis_url, database_url,
    **options)`` on the settings' servers and prints what it measured."""
    from quotagate.settings import Settings

    parser = argparse.ArgumentParser(prog=prog)
    for name, default in options.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--json", action="store_true")
    args = vars(parser.parse_args(argv))
    as_json = bool(args.pop("json"))
    settings = Settings.from_env()
    result: Any = asyncio.run(measure(str(settings.redis_url), str(settings.database_url), **args))
    print_measurement(result, as_json=as_json, width=width)


def print_measurement(measurement: Any, *, as_json: bool, width: int = 32) -> None:
    """A standalone benchmark's result (a dataclass): one JSON document, or a line a field."""
    report: dict[str, Any] = asdict(measurement)
    if as_json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key:{width}} {value}")
