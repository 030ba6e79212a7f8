"""Ratios and targets come from rows of the same run; the table and the JSON say the same."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest
from redis.asyncio import Redis

from quotagate.bench.cluster import spread_over_masters
from quotagate.bench.load import Accounts
from quotagate.bench.report import NodeLoad, Report, Row, Target
from quotagate.engine import CreditEngine
from quotagate.engine.keys import KeySpace


def _row(name: str, rate: float, p99: float | None = 2.0, baseline: str | None = None) -> Row:
    return Row(
        name=name, rate=rate, unit="req/s", count=int(rate * 10), errors=0, duration_s=10.0,
        concurrency=50, generator="wrk", p50_ms=1.0, p99_ms=p99, baseline=baseline,
    )  # fmt: skip


def test_ratios_and_targets() -> None:
    report = Report(
        rows=[_row("floor", 1000), _row("hook", 700, p99=5.0, baseline="floor"), _row("pg", 100)],
        targets=[
            Target("rate", "hook", "floor", "rate", 0.6),
            Target("p99", "hook", "floor", "p99", 2.0),
            Target("vs pg", "hook", "pg", "rate", 20),
            Target("missing", "hook", "nothing", "rate", 1),
        ],
    )
    report.finish()
    rows = report.by_name()
    assert rows["hook"].ratio == 0.7
    assert rows["floor"].ratio is None
    rate, p99, vs_pg, missing = report.targets
    assert (rate.value, rate.met) == (0.7, True)
    assert (p99.value, p99.met) == (2.5, False)
    assert (vs_pg.value, vs_pg.met) == (7.0, False)
    assert (missing.value, missing.met) == (None, None)
    text = report.render()
    assert text.splitlines()[0].split()[:3] == ["SCENARIO", "RATE", "UNIT"]
    assert "hook" in text and "0.70" in text
    assert "p99 hook / floor = 2.50 (target <= 2) NOT MET" in text
    data = report.as_json()
    assert [r["name"] for r in data["results"]] == ["floor", "hook", "pg"]
    assert data["targets"][0]["met"] is True


def test_cpu_and_memory_targets_read_one_row_and_the_memory_group() -> None:
    hook = _row("hook", 700)
    hook.server_cpu_us, hook.redis_us = 45.0, 15.0
    report = Report(
        rows=[hook],
        targets=[
            Target("cpu", "hook", "hook", "cpu", 2.5),
            Target("mem", "hook_record_bytes", "", "memory", 1.0, rate=10_000, window_s=300),
            Target("mem of another run", "nothing_bytes", "", "memory", 1.0, rate=1, window_s=1),
        ],
        memory={"hook_record_bytes": 232.0},
    )
    report.finish()
    cpu, mem, absent = report.targets
    assert (cpu.value, cpu.met) == (3.0, False)
    assert mem.value == pytest.approx(232 * 10_000 * 300 / 2**30) and mem.met is True
    assert (absent.value, absent.met) == (None, None)
    text = report.render()
    assert "cpu: CPU_US hook / REDIS_US hook = 3.00 (target <= 2.5) NOT MET" in text
    assert "mem: GiB of hook_record_bytes x 10000 req/s x 300 s = 0.65 (target <= 1) met" in text
    assert "mem of another run" not in text  # the memory group did not run it: not printed


def test_rounds_report_their_median() -> None:
    rounds = []
    for floor_rate, hook_rate in ((1000, 500), (1200, 900), (900, 600)):
        report = Report(
            rows=[_row("floor", floor_rate), _row("hook", hook_rate, baseline="floor")],
            targets=[Target("rate", "hook", "floor", "rate", 0.6)],
        )
        report.finish()
        rounds.append(report)
    merged = Report.median(rounds)
    floor, hook = merged.rows
    assert (floor.rate, hook.rate) == (1000, 600)
    assert hook.ratio == 600 / 900  # the median of each round's own: 0.5, 0.75 and 0.667
    assert "rounds 500/600/900" in hook.note
    (target,) = merged.targets
    assert (target.value, target.met) == (2 / 3, True)
    assert Report.median(rounds[:1]) is rounds[0]


def test_nodes_and_the_spread_over_masters_are_printed_and_kept() -> None:
    report = Report(
        rows=[_row("standalone/hook/spread", 1000), _row("cluster/hook/spread", 800)],
        nodes=[
            NodeLoad("cluster/hook/spread", "127.0.0.1:7001", 600, 0.6, 12.0, 20.0, 11.5),
            NodeLoad("cluster/hook/spread", "127.0.0.1:7002", 400, 0.4, 9.0, 22.5, 12.25),
            NodeLoad("cluster/hook/spread", "127.0.0.1:7003", 0, 0.0, 1.0, None, None),
        ],
        spread_per_master={"127.0.0.1:7002": 30, "127.0.0.1:7001": 70},
    )
    report.rows[1].baseline = "standalone/hook/spread"
    report.rows[1].redis_cpu_us = 21.04
    report.finish()
    lines = report.render().splitlines()
    assert lines[0].split()[7] == "REDIS_CPU_US"
    assert lines[2].split()[7] == "21.0"
    assert (
        "spread accounts per master: 127.0.0.1:7001 70 (70.0%), 127.0.0.1:7002 30 (30.0%)" in lines
    )
    at = lines.index("Redis per node (charges it made, CPU from INFO cpu, FCALL time):")
    header, first, _, idle = lines[at + 1 : at + 5]
    assert header.split() == [
        "SCENARIO", "NODE", "CHARGES", "SHARE", "CPU_MS", "CPU_US", "FCALL_US",
    ]  # fmt: skip
    assert first.split() == [
        "cluster/hook/spread",
        "127.0.0.1:7001",
        "600",
        "60%",
        "12",
        "20.0",
        "11.5",
    ]
    assert idle.split()[-2:] == ["-", "-"]
    data = report.as_json()
    assert data["spread_per_master"] == {"127.0.0.1:7002": 30, "127.0.0.1:7001": 70}
    assert data["nodes"][1]["fcall_us"] == 12.25
    assert data["results"][1]["ratio"] == 0.8


def test_spread_accounts_must_reach_every_master() -> None:
    engine = cast(CreditEngine, SimpleNamespace(keys=KeySpace("qgbenchtest", 64)))
    spread = Accounts("bench-", 300)
    nodes = cast(dict[str, Redis], dict.fromkeys(["a:1", "b:2", "c:3"]))
    even = {p: ("a:1", "b:2", "c:3")[p % 3] for p in range(64)}
    counts = spread_over_masters(engine, spread, even, nodes)
    assert sum(counts.values()) == 300 and all(n > 50 for n in counts.values()), counts
    lopsided = {p: ("a:1", "b:2")[p % 2] for p in range(64)}
    with pytest.raises(RuntimeError, match=r"no spread account is on the master\(s\) c:3"):
        spread_over_masters(engine, spread, lopsided, nodes)


def test_targets_of_rows_not_run_are_left_out_of_the_table() -> None:
    report = Report(
        rows=[_row("floor", 1000), _row("hook", 700, baseline="floor")],
        targets=[
            Target("measured", "hook", "floor", "rate", 0.6),
            Target("half", "hook", "nothing", "rate", 1),
            Target("neither", "absent", "nothing", "rate", 1),
        ],
    )
    report.finish()
    text = report.render()
    assert "measured: rate" in text and "half: rate hook / nothing = n/a" in text
    assert "neither" not in text
    assert [t["name"] for t in report.as_json()["targets"]] == ["measured", "half", "neither"]
