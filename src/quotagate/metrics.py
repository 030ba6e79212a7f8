"""Prometheus metrics of the gateway.

With several uvicorn workers, ``quotagate serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a
fresh directory before the workers start; prometheus-client then keeps each worker's values in
memory-mapped files there, and ``/metrics`` adds them up, whichever worker answers the scrape.
Only counters and histograms are kept that way (they add up across processes). Values that
are read at scrape time (the outbox lag, the age of the key cache) are measured then, by the
process that answers.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

HTTP_REQUESTS = Counter(
    "quotagate_http_requests_total",
    "HTTP answers, by endpoint and status code.",
    ["route", "status"],
)
HTTP_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
HTTP_LATENCY = Histogram(
    "quotagate_http_request_duration_seconds",
    "Time from the request's arrival in the endpoint to its answer.",
    ["route"],
    buckets=HTTP_LATENCY_BUCKETS,
)
AUTHZ_DECISIONS = Counter(
    "quotagate_authz_decisions_total",
    "Answers of the reverse-proxy hook, by decision.",
    ["decision"],
)
AUTHZ_BACKEND_FAILURES = Counter(
    "quotagate_authz_backend_failures_total",
    "Hook answers given without the backend (Redis down or slow), by failure policy.",
    ["policy"],
)
SHADOW_DECISIONS = Counter(
    "quotagate_shadow_decisions_total",
    "Charges of routes and tiers in shadow mode, by what they would have done (charged, or "
    "the refusal) and where they came from (hook, api). Nothing was charged.",
    ["decision", "source"],
)
SHADOW_ENTRIES_DROPPED = Counter(
    "quotagate_shadow_entries_dropped_total",
    "Shadow stream entries the flush could not read and dropped (they carry no money).",
)
WRITE_THROUGH = Counter(
    "quotagate_write_through_total",
    "Money-in writes copied to Postgres by the request (ok) or left to the flush (failed).",
    ["result"],
)
LEDGER_QUARANTINED = Counter(
    "quotagate_ledger_quarantined_total",
    "Outbox entries the flush put in ledger_quarantine because PostgreSQL refused them as they "
    "were, by whether their money was booked (booked=false: look at them now).",
    ["booked"],
)
LEDGER_FLUSH_ERRORS = Counter(
    "quotagate_ledger_flush_errors_total",
    "Flush errors, by kind: batch (a batch did not commit, because PostgreSQL or the credit "
    "Redis failed or the flush has a bug; its entries stay in the outbox for the next try) or "
    "quarantined (an entry PostgreSQL refused went to ledger_quarantine).",
    ["kind"],
)
ALERTS = Counter(
    "quotagate_alerts_total",
    "Alerts raised (found by the flush, written to PostgreSQL), by kind.",
    ["kind"],
)
WEBHOOK_DELIVERIES = Counter(
    "quotagate_webhook_deliveries_total",
    "Webhook delivery attempts, by outcome: delivered, retry (failed, tried again later), "
    "dead (failed for the last time).",
    ["outcome"],
)
FLUSH_TRIGGERS = Counter(
    "quotagate_flush_triggers_total",
    "Early flushes enqueued because a partition's outbox passed its threshold.",
)

FLUSH_INTERVAL_SECONDS = 1.0
"""How long a count may wait in the process before it reaches the metric (and the worker's
file, in multiprocess mode). /metrics flushes its own process's counts first."""

_status_cache: dict[tuple[str, int], Counter] = {}
_latency_cache: dict[str, Histogram] = {}


class Tally:
    """Counts and latencies kept as plain numbers per request, added to the metrics in bulk.

    A prometheus-client counter in multiprocess mode checks the process id and writes a
    memory-mapped file on every ``inc()``, several ``getpid()`` calls each: a share of a hook
    worker's time under load (docs/benchmark.md). Here a request adds to a dict; a timer, armed
    by the first count after a flush, moves the sums to the metrics once a second.
    """

    def __init__(self) -> None:
        self.counts: dict[Counter, int] = {}
        self.latencies: dict[Histogram, list[float]] = {}
        """Per histogram child: a count per bucket, then the sum of the observations."""
        self._timer: asyncio.TimerHandle | None = None

    def inc(self, child: Counter) -> None:
        counts = self.counts
        counts[child] = counts.get(child, 0) + 1
        if self._timer is None:
            self._arm()

    def observe(self, child: Histogram, seconds: float) -> None:
        pending = self.latencies.get(child)
        if pending is None:
            pending = self.latencies[child] = [0.0] * (len(HTTP_LATENCY_BUCKETS) + 2)
        pending[bisect_left(HTTP_LATENCY_BUCKETS, seconds)] += 1
        pending[-1] += seconds
        if self._timer is None:
            self._arm()

    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # counted outside a loop: nothing would flush it later
            self.flush()
            return
        self._timer = loop.call_later(FLUSH_INTERVAL_SECONDS, self.flush)

    def flush(self) -> None:
        """Move every pending count to its metric (prometheus-client's own values)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        counts, self.counts = self.counts, {}
        for child, n in counts.items():
            child.inc(n)
        latencies, self.latencies = self.latencies, {}
        for hist, pending in latencies.items():
            # A histogram child keeps one value per bucket (not cumulative) and their sum:
            # what observe() would have added, added at once.
            buckets = hist._buckets  # private: tests/unit/test_metrics.py checks it
            for i, count in enumerate(pending[:-1]):
                if count:
                    buckets[i].inc(count)
            hist._sum.inc(pending[-1])


TALLY = Tally()


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def count_shadow(decision: str, source: str) -> None:
    """Record one shadow charge's decision."""
    child = _shadow_cache.get((decision, source))
    if child is None:
        child = _shadow_cache[(decision, source)] = SHADOW_DECISIONS.labels(decision, source)
    TALLY.inc(child)


_shadow_cache: dict[tuple[str, str], Counter] = {}


def count_request(route: str, status: int, seconds: float) -> None:
    """Record one answer. Label children are cached: this runs on every request."""
    child = _status_cache.get((route, status))
    if child is None:
        child = _status_cache[(route, status)] = HTTP_REQUESTS.labels(route, str(status))
    TALLY.inc(child)
    latency = _latency_cache.get(route)
    if latency is None:
        latency = _latency_cache[route] = HTTP_LATENCY.labels(route)
    TALLY.observe(latency, seconds)


def serve_http(host: str, port: int) -> WSGIServer:
    """Serve this process's metrics on ``host:port`` from a daemon thread; the server, to
    shut down. For ``quotagate worker``, whose counters (flush errors, quarantined entries,
    webhook deliveries) no gateway's /metrics can show: each process keeps its own."""
    server, _thread = start_http_server(port, addr=host)
    return server


Sampler = Callable[[], Iterable[Metric]]
"""Measures something at scrape time (GaugeMetricFamily...): nothing kept between scrapes,
nothing written to the multiprocess directory."""


class _Sampled(Collector):
    def __init__(self, samplers: Iterable[Sampler]) -> None:
        self.samplers = list(samplers)

    def collect(self) -> Iterable[Metric]:
        for sample in self.samplers:
            yield from sample()


def render(samplers: Iterable[Sampler] = ()) -> tuple[bytes, str]:
    """The exposition text: the kept metrics (added up over workers) and the sampled ones.

    This process's pending counts are flushed first; other workers' reach their files within
    FLUSH_INTERVAL_SECONDS."""
    TALLY.flush()
    if multiprocess_mode():
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    sampled = CollectorRegistry()
    sampled.register(_Sampled(samplers))
    return generate_latest(registry) + generate_latest(sampled), CONTENT_TYPE_LATEST
