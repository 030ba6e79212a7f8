"""Runs the benchmark: sets the stage, measures every scenario, takes the stage down.

Scenarios come in groups (``http``, ``postgres``, ``engine``, ``batch``, ``nginx``,
``flush``, ``memory``, and ``cluster``, run only when asked for). Each row is measured for
the same fixed time at the same fixed concurrency with the same load generator, and compared
with a baseline row of the same run.
``memory`` measures bytes kept, not rates.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from quotagate.bench import scenarios
from quotagate.bench.load import HttpLoad, LoadResult, available_generator
from quotagate.bench.pyload import run_pyload
from quotagate.bench.report import Report, Row, Target
from quotagate.bench.stage import Stage, server_database_url
from quotagate.bench.wrk import run_wrk
from quotagate.config import Idempotency

GROUPS = ("http", "postgres", "engine", "batch", "nginx", "flush", "memory")
"""Scenario groups a run measures by default, in the order they run."""

ALL_GROUPS = (*GROUPS, "cluster")
"""Every group that can be asked for: ``cluster`` starts servers of its own (a standalone
Valkey and a 3-master cluster), so it runs only when named (``--cluster`` or ``--only``)."""


class Served(Protocol):
    """What an HTTP row is measured against: a server, or a chain of them (nginx in front)."""

    @property
    def base_url(self) -> str: ...

    def cpu_seconds(self) -> float | None: ...


@dataclass(frozen=True)
class Options:
    duration_s: float = 10.0
    """Measured seconds per scenario."""
    warmup_s: float = 1.0
    """Unmeasured seconds before each HTTP and engine scenario."""
    concurrency: int = 50
    """Connections (HTTP), tasks (engine) or clients (redis-benchmark)."""
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    """uvicorn worker processes of every HTTP server."""
    generator: str = "auto"
    """``auto`` (wrk when installed), ``wrk`` or ``pyload``."""
    wrk_threads: int = 2
    spread_accounts: int = 100_000
    flush_rows: int = 100_000
    groups: tuple[str, ...] = GROUPS
    rounds: int = 1
    """Times every group is measured; each row and target reports its median round, so that
    a burst of load from elsewhere moves one round, not the result."""

    @classmethod
    def quick(cls, **changes: object) -> Options:
        """Every scenario briefly: the whole run in well under two minutes."""
        return replace(cls(duration_s=3.0, warmup_s=0.5, flush_rows=50_000), **changes)  # type: ignore[arg-type]


@dataclass
class Run:
    """One benchmark run in progress."""

    options: Options
    stage: Stage
    report: Report
    generator: str
    redis_accounts_ready: bool = False
    """The hot and spread accounts are open in Redis (the http and engine groups share them)."""

    def http(self, name: str, load: HttpLoad, server: Served, baseline: str | None) -> Row:
        """Warm up, then measure ``load`` against ``server``, with its CPU time per request."""
        o = self.options
        if o.warmup_s > 0:
            self._generate(load, server.base_url, o.warmup_s)
        cpu_before = server.cpu_seconds()
        result = self._generate(load, server.base_url, o.duration_s)
        cpu_after = server.cpu_seconds()
        row = self.add(name, result, baseline)
        if cpu_before is not None and cpu_after is not None and result.requests:
            row.server_cpu_us = (cpu_after - cpu_before) / result.requests * 1e6
        return row

    def _generate(self, load: HttpLoad, base_url: str, duration_s: float) -> LoadResult:
        o = self.options
        if self.generator == "wrk":
            return run_wrk(
                load, base_url, duration_s=duration_s, concurrency=o.concurrency,
                threads=o.wrk_threads,
            )  # fmt: skip
        return run_pyload(load, base_url, duration_s=duration_s, concurrency=o.concurrency)

    def add_rows(
        self,
        name: str,
        rows: int,
        seconds: float,
        *,
        generator: str,
        baseline: str | None = None,
        note: str = "",
    ) -> Row:
        """A row counting rows written, not requests (no latency: one batch job)."""
        rate = rows / seconds if seconds else 0.0
        row = Row(
            name=name, rate=rate, unit="rows/s", count=rows, errors=0,
            duration_s=round(seconds, 3), concurrency=1, generator=generator,
            baseline=baseline, note=note,
        )  # fmt: skip
        return self.report.add(row)

    def add(self, name: str, result: LoadResult, baseline: str | None, note: str = "") -> Row:
        return self.report.add(
            Row(
                name=name,
                rate=result.rate,
                unit="req/s",
                count=result.requests,
                errors=result.errors,
                duration_s=round(result.duration_s, 3),
                concurrency=self.options.concurrency,
                generator=result.generator,
                p50_ms=result.p50_ms,
                p99_ms=result.p99_ms,
                baseline=baseline,
                note=note,
                server_cpu_us=(
                    result.cpu_s / result.requests * 1e6
                    if result.cpu_s is not None and result.requests
                    else None
                ),
            )
        )


TARGETS = (
    Target("hook vs HTTP floor (spread)", "hook/spread", "http/floor", "rate", 0.6),
    Target("hook p99 vs HTTP floor (spread)", "hook/spread", "http/floor", "p99", 2.0),
    Target("hook vs HTTP floor (hot)", "hook/hot", "http/floor", "rate", 0.6),
    Target("hook p99 vs HTTP floor (hot)", "hook/hot", "http/floor", "p99", 2.0),
    Target("hook vs Postgres design (spread)", "hook/spread", "postgres/spread", "rate", 5.0),
    Target("hook vs Postgres design (hot)", "hook/hot", "postgres/hot", "rate", 20.0),
    Target("consume vs HTTP floor (spread)", "consume/spread", "http/floor", "rate", 0.9),
    Target("consume vs HTTP floor (hot)", "consume/hot", "http/floor", "rate", 0.9),
    Target("gateway CPU per hook request vs Redis per charge (spread)", "hook/spread",
           "hook/spread", "cpu", 2.5),
    Target("gateway CPU per hook request vs Redis per charge (hot)", "hook/hot", "hook/hot",
           "cpu", 2.5),
    Target("engine vs redis-benchmark", "engine/in-process", "redis-benchmark", "rate", 0.6),
    Target("batch vs pipelined script", "batch/spread", "redis-benchmark/pipelined", "rate", 0.6),
    Target("nginx with the hook vs nginx alone", "nginx/hook", "nginx/alone", "rate", 0.4),
    Target("nginx p99 with the hook vs alone", "nginx/hook", "nginx/alone", "p99", 3.0),
    Target("flush vs bare COPY", "flush/worker", "flush/copy", "rate", 0.5),
    Target("hook idempotency memory at 10k req/s, steady state", "hook_record_bytes", "",
           "memory", 1.0, rate=10_000, window_s=Idempotency().hook_ttl_seconds),
)  # fmt: skip


async def run(
    options: Options,
    *,
    redis_url: str,
    database_url: str,
    progress: Callable[[str], None] = lambda _: None,
) -> Report:
    """Measure every scenario of ``options.groups``; the stage is always taken down."""
    generator = available_generator(options.generator)
    stage = Stage(redis_url, await server_database_url(database_url))
    conditions = _conditions(options, generator)
    conditions.update(key_prefix=stage.prefix, database=stage.database)
    rounds: list[Report] = []
    taking_down = _cancel_on_sigterm()
    try:
        progress(f"setting up (key prefix {stage.prefix}, database {stage.database})")
        await stage.open()
        redis_accounts_ready = False
        for i in range(options.rounds):
            if options.rounds > 1:
                progress(f"round {i + 1} of {options.rounds}")
            report = Report(targets=[replace(t) for t in TARGETS])
            current = Run(options, stage, report, generator, redis_accounts_ready)
            for group in options.groups:
                await scenarios.GROUPS[group](current, progress)
            redis_accounts_ready = current.redis_accounts_ready
            report.finish()
            rounds.append(report)
    finally:
        taking_down.set()
        await stage.close()
    merged = Report.median(rounds)
    merged.conditions = {**conditions, "rounds": options.rounds, "load_after": _load_average()}
    return merged


def _cancel_on_sigterm() -> asyncio.Event:
    """SIGTERM stops the run as Ctrl-C does: the stage is still taken down.

    The run is cancelled, and again every second until it is taking its stage down (the
    returned event): a library call can swallow one cancellation, seen here as a run that went
    on measuring after SIGTERM.
    """
    taking_down = asyncio.Event()
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if task is not None and not task.done() and not taking_down.is_set():
            task.cancel()
            loop.call_later(1.0, stop)

    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform
        loop.add_signal_handler(signal.SIGTERM, stop)
    return taking_down


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux
        return "n/a"


def _conditions(options: Options, generator: str) -> dict[str, object]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "generator": generator,
        "concurrency": options.concurrency,
        "duration_s": options.duration_s,
        "workers": options.workers,
        "spread_accounts": options.spread_accounts,
        "redis_benchmark": bool(shutil.which("redis-benchmark")),
        "load_before": _load_average(),
    }
