"""For operators and tools: liveness, readiness, metrics and the OpenAPI document.

None of these take a key: bind /metrics privately (or let the proxy refuse it from outside).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import msgspec
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from redis import exceptions as redis_errors
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotagate import metrics
from quotagate.api.endpoint import endpoint, json_response
from quotagate.api.gateway import Gateway
from quotagate.api.openapi import openapi_document
from quotagate.api.schemas import HealthOut, ReadyOut
from quotagate.engine.memory import MemoryState, read_memory_state
from quotagate.engine.replies import unavailable
from quotagate.ledger import outbox_lag

PROBE_TIMEOUT_SECONDS = 1.0
"""A readiness probe answers within about this, whatever the backends do."""


async def _redis_state(gw: Gateway) -> str:
    """ "ok", "needs_recovery", or "down": not answering, or in a state where it cannot take
    charges (loading, busy, a replica: quotagate.engine.replies.TRANSIENT_STATES)."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            await gw.engine.redis.ping()
            if not await _writable(gw):
                return "down"
            ready = await gw.engine.is_ready()
    except Exception:
        return "down"
    return "ok" if ready else "needs_recovery"


async def _writable(gw: Gateway) -> bool:
    """False for a replica: it answers reads (PING, the ready flags) but refuses every charge
    with READONLY, as a primary demoted by a failover does. A server that does not allow ROLE
    (some managed services) is taken at its word."""
    try:
        role = await gw.engine.redis.execute_command("ROLE")  # type: ignore[no-untyped-call]
    except redis_errors.ResponseError as exc:
        return unavailable(exc) is None
    return bool(role) and str(role[0]) == "master"


async def _lag(gw: Gateway) -> dict[str, Any] | None:
    try:
        lag = await asyncio.wait_for(outbox_lag(gw.engine), PROBE_TIMEOUT_SECONDS)
    except Exception:
        return None
    return {
        "total": lag.total,
        "oldest_age_seconds": lag.oldest_age_seconds,
        # Only the partitions that wait: 64 lines of zeros would hide the ones that matter.
        "partitions": {str(p.partition): p.entries for p in lag.partitions if p.entries},
    }


async def _memory(gw: Gateway) -> MemoryState | None:
    try:
        return await asyncio.wait_for(read_memory_state(gw.engine.redis), PROBE_TIMEOUT_SECONDS)
    except Exception:
        return None


def _memory_answer(state: MemoryState | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {"used_bytes": state.used_bytes, "max_bytes": state.max_bytes, "policy": state.policy}


def routes(gw: Gateway) -> list[Route]:
    document = msgspec.json.encode(openapi_document(gw.config))

    async def healthz(request: Request) -> Response:
        return json_response(HealthOut("ok"))

    @endpoint("readyz")
    async def readyz(request: Request) -> Response:
        redis, postgres = await asyncio.gather(_redis_state(gw), gw.ledger.ping())
        lag = await _lag(gw) if redis != "down" else None
        memory = await _memory(gw) if redis != "down" else None
        ready = redis == "ok" and postgres == "ok"
        answer = ReadyOut(ready, redis, postgres, lag, _memory_answer(memory))  # type: ignore[arg-type]
        return json_response(answer, 200 if ready else 503)

    async def metrics_text(request: Request) -> Response:
        lag = await _lag(gw)
        memory = await _memory(gw)

        def sample() -> Iterable[Metric]:
            yield from _lag_metrics(lag)
            yield from _memory_metrics(memory)
            age = gw.keys.age_seconds()
            g = GaugeMetricFamily(
                "quotagate_api_keys_cache_age_seconds",
                "Seconds since this process last loaded the API keys from Postgres.",
            )
            g.add_metric([], -1.0 if age is None else age)
            yield g

        body, content_type = metrics.render([sample])
        return Response(body, headers={"Content-Type": content_type})

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]


def _memory_metrics(state: MemoryState | None) -> Iterable[Metric]:
    if state is None:
        return
    for name, value, doc in (
        ("used_memory_bytes", state.used_bytes, "Bytes Redis uses (INFO memory used_memory)."),
        ("maxmemory_bytes", state.max_bytes, "Redis's maxmemory in bytes; 0 when unlimited."),
    ):
        g = GaugeMetricFamily(f"quotagate_redis_{name}", doc)
        g.add_metric([], float(value))
        yield g


def _lag_metrics(lag: dict[str, Any] | None) -> Iterable[Metric]:
    if lag is None:
        return
    for name, metric, doc in (
        ("total", "entries", "Entries in the outboxes, not yet flushed to Postgres."),
        ("oldest_age_seconds", "oldest_age_seconds", "Age of the oldest entry not yet flushed."),
    ):
        value = lag.get(name)
        if name == "oldest_age_seconds" and value is None:
            value = 0.0
        if isinstance(value, int | float):
            g = GaugeMetricFamily(f"quotagate_outbox_{metric}", doc)
            g.add_metric([], float(value))
            yield g
