"""The engine without HTTP: in-process charges against redis-benchmark running the same script.

Both send the FCALL of ``consume.lua`` with the same KEYS and ARGV shape (8 keys of one account,
10 arguments, no idempotency key), over ``concurrency`` connections or tasks, for about the same
time. What differs is the client: redis-benchmark is C and sends one call per connection per
round trip; the engine is Python and batches the calls of one loop tick into one pipeline.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import io
import subprocess
import time

from quotagate import ids
from quotagate.bench.load import LoadResult, percentile
from quotagate.engine import CreditEngine

RESOURCE = "api_call"


async def engine_load(
    engine: CreditEngine,
    account: str,
    *,
    duration_s: float,
    concurrency: int,
    warmup_s: float = 0.0,
) -> LoadResult:
    """``concurrency`` tasks charging ``account`` one credit at a time, in this process."""
    latencies: list[int] = []
    state = {"measuring": False, "stop": False, "errors": 0}

    async def worker() -> None:
        while not state["stop"]:
            start = time.perf_counter_ns()
            try:
                await engine.consume(account, RESOURCE)
            except Exception:
                if state["measuring"]:
                    state["errors"] += 1
                await asyncio.sleep(0)  # a failing call may not yield: let the loop go on
                continue
            if state["measuring"]:
                latencies.append(time.perf_counter_ns() - start)

    # As the gateway does after start-up: what exists now stays out of full collections.
    gc.collect()
    gc.freeze()
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup_s)
        state["measuring"] = True
        begin, cpu_begin = time.perf_counter(), time.process_time()
        await asyncio.sleep(duration_s)
        state["measuring"] = False
        elapsed, cpu = time.perf_counter() - begin, time.process_time() - cpu_begin
    finally:  # also when interrupted: no task may outlive the measurement
        state["stop"] = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        gc.unfreeze()
    latencies.sort()
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return LoadResult(
        requests=len(latencies),
        errors=int(state["errors"]),
        duration_s=elapsed,
        p50_ms=None if p50 is None else p50 / 1e6,
        p99_ms=None if p99 is None else p99 / 1e6,
        generator="in-process",
        cpu_s=cpu,
    )


def consume_command(engine: CreditEngine, account: str) -> list[str]:
    """The FCALL that ``engine.consume(account, RESOURCE)`` sends, as command arguments."""
    script = engine.scripts["consume"]
    keys = engine.keys.account(account, None).as_list()
    cost = str(engine.config.cost_of(RESOURCE))
    idem_ttl = str(engine.config.idempotency.ttl_seconds * 1000)
    args = [ids.new_id(), account, cost, RESOURCE, "1", "", "", "", "", idem_ttl]
    return [str(a) for a in script.command(keys, args)]


def redis_benchmark(
    redis_url: str,
    command: list[str],
    *,
    duration_s: float,
    concurrency: int,
    pipeline: int = 1,
    keyspace: int | None = None,
) -> LoadResult:
    """Run ``command`` through redis-benchmark for about ``duration_s`` seconds, ``pipeline``
    calls deep per connection (-P); with ``keyspace``, each ``__rand_int__`` of the command
    becomes a random 12-digit number below it (-r).

    redis-benchmark counts requests, not time: a short calibration run sets the count.
    """
    extra = ["-P", str(pipeline)] + (["-r", str(keyspace)] if keyspace else [])
    first = max(2000, concurrency * 200 * pipeline)
    calibration = _run(redis_url, command, concurrency, requests=first, extra=extra)
    requests = max(1000, int(calibration.rate * duration_s))
    return _run(redis_url, command, concurrency, requests=requests, extra=extra)


def _run(
    redis_url: str,
    command: list[str],
    concurrency: int,
    *,
    requests: int,
    extra: list[str] | None = None,
) -> LoadResult:
    args = ["redis-benchmark", "-u", redis_url, "-c", str(concurrency), "-n", str(requests)]
    args += [*(extra or []), "--csv", "--precision", "3", *command]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    if proc.returncode != 0 or not rows:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"redis-benchmark failed: {tail[0]}")
    row = rows[-1]
    rate = float(row["rps"])
    return LoadResult(
        requests=requests,
        errors=0,
        duration_s=requests / rate if rate else 0.0,
        p50_ms=float(row["p50_latency_ms"]),
        p99_ms=float(row["p99_latency_ms"]),
        generator="redis-benchmark",
    )
