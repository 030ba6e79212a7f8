"""Counts kept in the process reach prometheus-client as if observed one by one."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from tests.support.servers import free_port

from quotagate import metrics
from quotagate.metrics import HTTP_LATENCY_BUCKETS, Tally


def _exposed(registry: CollectorRegistry) -> list[str]:
    """The exposition without the creation timestamps, which differ by construction."""
    return [x for x in generate_latest(registry).decode().splitlines() if "_created" not in x]


def _pair() -> tuple[CollectorRegistry, CollectorRegistry]:
    return CollectorRegistry(), CollectorRegistry()


def _metrics(registry: CollectorRegistry) -> tuple[Counter, Histogram]:
    counter = Counter("t_total", "t", ["route"], registry=registry)
    hist = Histogram("t_seconds", "t", ["route"], buckets=HTTP_LATENCY_BUCKETS, registry=registry)
    return counter, hist


def test_a_flush_gives_what_observing_each_would_have() -> None:
    direct, tallied = _pair()
    c1, h1 = _metrics(direct)
    c2, h2 = _metrics(tallied)
    tally = Tally()
    samples = [0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.02, 0.7, 2.5, 3.0, 100.0]
    for s in samples:
        c1.labels("a").inc()
        h1.labels("a").observe(s)
        tally.inc(c2.labels("a"))
        tally.observe(h2.labels("a"), s)
    tally.flush()
    assert _exposed(direct) == _exposed(tallied)
    tally.flush()  # nothing pending: nothing added twice
    assert _exposed(direct) == _exposed(tallied)


async def test_counts_reach_the_metric_within_the_flush_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "FLUSH_INTERVAL_SECONDS", 0.05)
    registry = CollectorRegistry()
    counter = Counter("u_total", "u", registry=registry)
    tally = Tally()
    for _ in range(3):
        tally.inc(counter)
    assert counter._value.get() == 0  # pending in the process
    await asyncio.sleep(0.2)
    assert counter._value.get() == 3


def test_render_flushes_this_process_first() -> None:
    child = metrics.HTTP_REQUESTS.labels("render-test", "200")
    before = child._value.get()
    metrics.TALLY.inc(child)
    metrics.render()
    assert child._value.get() == before + 1


def test_a_worker_serves_its_own_counters_over_http() -> None:
    port = free_port()
    server = metrics.serve_http("127.0.0.1", port)
    try:
        metrics.LEDGER_FLUSH_ERRORS.labels("batch").inc()
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        server.shutdown()
        server.server_close()
    counted = [line for line in text.splitlines()
               if line.startswith('quotagate_ledger_flush_errors_total{kind="batch"}')]  # fmt: skip
    assert counted and float(counted[0].split()[-1]) >= 1
