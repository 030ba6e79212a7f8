"""Batch charges against Redis's own limit: ``POST /v1/charges`` through `quotagate serve`,
counted in charges per second, spread over the stage's accounts, and redis-benchmark running
the same ``consume.lua`` pipelined 16 deep over as many accounts.

Rows:
  batch/spread               batches of BATCH_CHARGES charges of 1 credit, each for an account
                             drawn from the spread accounts, over BATCH_CONNECTIONS connections
                             (charges/s; CPU_US is the gateway's CPU per charge)
  redis-benchmark/pipelined  ``redis-benchmark -P 16 -r N`` sending the FCALL of consume.lua
                             for random accounts of N opened for it (charges/s)

redis-benchmark draws each ``__rand_int__`` of a command on its own, so its accounts live in a
key space of one partition (the same ``{0}`` hash tag for all, which one Redis does not mind):
the account hash it reads and writes is a random one of the N, the rest of the call is the
one the engine sends (no holds, no rate limit, no idempotency key).
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import time
from typing import TYPE_CHECKING

from quotagate.bench import engine_load
from quotagate.bench.load import LoadResult, percentile
from quotagate.bench.report import Row
from quotagate.bench.servers import ServeOptions
from quotagate.bench.stage import BENCH_CONFIG, spread_accounts
from quotagate.config import parse_config
from quotagate.engine import CreditEngine

if TYPE_CHECKING:
    from collections.abc import Callable

    from quotagate.bench.runner import Run

BATCH_CHARGES = 1000
"""Charges per request: the gateway's default batch.max_charges."""
BATCH_CONNECTIONS = 8
"""Batches in flight at once: 8,000 charges, enough to keep Redis busy between two answers."""
BODIES = 32
"""Distinct bodies the load cycles through (built before the measurement)."""
PIPELINE = 16
"""redis-benchmark's pipeline depth (-P)."""
BATCH_ROW = "batch/spread"
PIPELINED_ROW = "redis-benchmark/pipelined"

_CONTENT_LENGTH = re.compile(rb"content-length: *(\d+)", re.IGNORECASE)
_CHARGED = b'"status":200'


def _requests(port: int, service_key: str, accounts: list[str], rng: random.Random) -> list[bytes]:
    requests = []
    for _ in range(BODIES):
        items = ",".join(
            f'{{"account_id":"{rng.choice(accounts)}","resource":"api_call"}}'
            for _ in range(BATCH_CHARGES)
        )
        body = f'{{"charges":[{items}]}}'.encode()
        head = (
            f"POST /v1/charges HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {service_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        requests.append(head.encode() + body)
    return requests


class _Tally:
    def __init__(self) -> None:
        self.measuring = False
        self.stop = False
        self.charges = 0
        self.refused = 0
        self.latencies_ns: list[int] = []


async def _connection(port: int, requests: list[bytes], tally: _Tally, offset: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        sent = offset
        while not tally.stop:
            started = time.perf_counter_ns()
            writer.write(requests[sent % len(requests)])
            sent += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = _CONTENT_LENGTH.search(head)
            body = await reader.readexactly(int(length.group(1)) if length else 0)
            if tally.measuring:
                charged = body.count(_CHARGED) if head[9:12] == b"200" else 0
                tally.charges += charged
                tally.refused += BATCH_CHARGES - charged
                tally.latencies_ns.append(time.perf_counter_ns() - started)
    finally:
        writer.close()


async def batch_load(
    port: int, requests: list[bytes], *, duration_s: float, warmup_s: float
) -> LoadResult:
    """BATCH_CONNECTIONS connections posting the batches; charges counted from the answers."""
    tally = _Tally()
    tasks = [
        asyncio.create_task(_connection(port, requests, tally, i * 3))
        for i in range(BATCH_CONNECTIONS)
    ]
    try:
        await asyncio.sleep(warmup_s)
        tally.measuring = True
        begin = time.perf_counter()
        await asyncio.sleep(duration_s)
        tally.measuring = False
        elapsed = time.perf_counter() - begin
    finally:
        tally.stop = True
        done = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [d for d in done if isinstance(d, BaseException)]
    if failures:
        raise RuntimeError(f"the batch load failed: {failures[0]!r}")
    latencies = sorted(tally.latencies_ns)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return LoadResult(
        requests=tally.charges,
        errors=tally.refused,
        duration_s=elapsed,
        p50_ms=None if p50 is None else p50 / 1e6,
        p99_ms=None if p99 is None else p99 / 1e6,
        generator="batch client",
    )


def _charges_row(
    run: Run, name: str, result: LoadResult, concurrency: int, baseline: str | None, note: str
) -> Row:
    return run.report.add(
        Row(
            name=name, rate=result.rate, unit="charges/s", count=result.requests,
            errors=result.errors, duration_s=round(result.duration_s, 3), concurrency=concurrency,
            generator=result.generator, p50_ms=result.p50_ms, p99_ms=result.p99_ms,
            baseline=baseline, note=note,
        )
    )  # fmt: skip


async def measure(run: Run, progress: Callable[[str], None]) -> None:
    """Both rows; the pipelined baseline first (it needs no gateway). The spread accounts
    are open in Redis already."""
    from quotagate.bench import gateway

    if shutil.which("redis-benchmark"):
        await _pipelined(run, progress)
    else:
        progress("redis-benchmark is not installed (apt-get install redis-tools): no baseline")
    keys = await asyncio.to_thread(gateway.prepare, run.stage)
    spread = spread_accounts(run.options.spread_accounts).all()
    o = run.options
    with gateway.serving_gateway(run.stage, ServeOptions(o.workers)) as app:
        requests = _requests(app.port, keys.service, spread, random.Random(7))
        progress(f"measuring {BATCH_ROW}")
        cpu_before = app.cpu_seconds()
        result = await batch_load(app.port, requests, duration_s=o.duration_s, warmup_s=o.warmup_s)
        cpu_after = app.cpu_seconds()
    note = f"{BATCH_CHARGES} charges a request, {BATCH_CONNECTIONS} in flight"
    row = _charges_row(run, BATCH_ROW, result, BATCH_CONNECTIONS, PIPELINED_ROW, note)
    if cpu_before is not None and cpu_after is not None and result.requests:
        row.server_cpu_us = (cpu_after - cpu_before) / result.requests * 1e6
    await run.stage.clear_outboxes()


async def _pipelined(run: Run, progress: Callable[[str], None]) -> None:
    count = run.options.spread_accounts
    config = parse_config(BENCH_CONFIG.replace("partitions = 64", "partitions = 1"))
    engine = CreditEngine.from_url(
        run.stage.redis_url, config, prefix=run.stage.prefix + ":rb"
    )  # its own keys
    try:
        await engine.initialize()
        progress(f"opening {count} accounts for {PIPELINED_ROW}")
        names = [f"rb-{i:012d}" for i in range(count)]
        for i in range(0, count, 2000):
            await asyncio.gather(*(engine.upsert_account(a) for a in names[i : i + 2000]))
        outbox = engine.keys.outbox(0)
        await engine.redis.delete(outbox)
        command = engine_load.consume_command(engine, "rb-__rand_int__")
        progress(f"measuring {PIPELINED_ROW}")
        o = run.options
        result = await asyncio.to_thread(
            engine_load.redis_benchmark, run.stage.redis_url, command,
            duration_s=o.duration_s, concurrency=o.concurrency, pipeline=PIPELINE,
            keyspace=count,
        )  # fmt: skip
        charged = int(await engine.redis.xlen(outbox))
        note = f"-P {PIPELINE} -r {count}, same FCALL of consume.lua"
        row = _charges_row(run, PIPELINED_ROW, result, o.concurrency, None, note)
        if charged < result.requests:
            row.note += f"; only {charged} charges for {result.requests} calls"
        await engine.redis.delete(outbox)
    finally:
        await engine.aclose()
