"""Prometheus metrics of the gateway.

With several uvicorn workers, ``quotagate serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a
fresh directory before the workers start; prometheus-client then keeps each worker's values in
memory-mapped files there, and ``/metrics`` adds them up, whichever worker answers the scrape.
Only counters and histograms are kept that way (they add up across processes). Values that
are read at scrape time (the outbox lag, the age of the key cache) are measured then, by the
process that answers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
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
HTTP_LATENCY = Histogram(
    "quotagate_http_request_duration_seconds",
    "Time from the request's arrival in the endpoint to its answer.",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
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
WRITE_THROUGH = Counter(
    "quotagate_write_through_total",
    "Money-in writes copied to Postgres by the request (ok) or left to the flush (failed).",
    ["result"],
)
FLUSH_TRIGGERS = Counter(
    "quotagate_flush_triggers_total",
    "Early flushes enqueued because a partition's outbox passed its threshold.",
)

_status_cache: dict[tuple[str, int], Counter] = {}
_latency_cache: dict[str, Histogram] = {}


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def count_request(route: str, status: int, seconds: float) -> None:
    """Record one answer. Label children are cached: this runs on every request."""
    child = _status_cache.get((route, status))
    if child is None:
        child = _status_cache[(route, status)] = HTTP_REQUESTS.labels(route, str(status))
    child.inc()
    latency = _latency_cache.get(route)
    if latency is None:
        latency = _latency_cache[route] = HTTP_LATENCY.labels(route)
    latency.observe(seconds)


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
    """The exposition text: the kept metrics (added up over workers) and the sampled ones."""
    if multiprocess_mode():
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    sampled = CollectorRegistry()
    sampled.register(_Sampled(samplers))
    return generate_latest(registry) + generate_latest(sampled), CONTENT_TYPE_LATEST
