"""The scenarios, by group. Each group sets up what it needs on the stage and measures its rows.

Rows (``name``: what it measures, compared with):
  http/floor        the gateway's ``GET /healthz``: the HTTP floor every route pays
  http/bare         a one-route Starlette app served the same way: the server's ceiling (floor)
  hook/hot|spread   ``GET /v1/authz`` charging 1 credit, one account or 100k accounts (floor)
  hook/reserve      the same over 100k accounts on a reserve route: a hold of 1 credit
  hook/shadow       the same on a shadow route: decided and recorded, nothing charged
                    (hook/spread)
  hook/grants-1|2   hook/hot on an account holding 1 or 2 explicit grants (hook/hot)
  hook/member       hook/hot on a member of a pool: the pool pays each charge (hook/hot)
  consume/hot|spread ``POST /v1/accounts/{id}/consume`` with a JSON body (floor)
  postgres/hot|spread the design without quotagate: a Postgres transaction per charge, over the
                    same HTTP server settings, answering the hook's request
  engine/in-process ``CreditEngine.consume`` from concurrent tasks, no HTTP (redis-benchmark)
  engine/unbatched  the same with the engine's pipeline batching off (redis-benchmark)
  engine/grants-2|20 engine/in-process on an account holding 2 or 20 explicit grants, which
                    every charge reads, draws on and writes back (engine/in-process)
  engine/member     engine/in-process on a member of a pool with a limit: each charge reads
                    both accounts and writes the pool's spend and the member's use
                    (engine/in-process)
  redis-benchmark   redis-benchmark sending the same FCALL of consume.lua
  batch/spread      POST /v1/charges, charges/s over 100k accounts (redis-benchmark/pipelined)
  redis-benchmark/pipelined the same FCALL pipelined 16 deep over 100k accounts
  nginx/alone       wrk through nginx (the example site) to a trivial upstream
  nginx/hook        the same with auth_request calling the hook first (nginx/alone)
  flush/worker      the ledger flush, rows/s (flush/copy)
  flush/copy        a bare COPY of the same rows into the same table
  standalone/..., cluster/...  engine/in-process and hook/hot|spread on the benchmark's own
                    standalone Valkey and 3-master cluster (cluster rows: the standalone's)
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg

from quotagate.bench import engine_load, pgdesign, redis_cpu
from quotagate.bench.load import Accounts, HttpLoad
from quotagate.bench.servers import ServeOptions, serving
from quotagate.bench.stage import CREDITS, HOT, asyncpg_url, spread_accounts
from quotagate.engine import CreditEngine
from quotagate.jobs.expire import expire_all_async

if TYPE_CHECKING:
    from quotagate.bench.report import Row
    from quotagate.bench.runner import Run

Progress = Callable[[str], None]

FLOOR = "http/floor"


def hook_load(accounts: Accounts, hook_key: str | None = None) -> HttpLoad:
    """The authz hook as a proxy calls it: 1 unit of api_call for the account it names."""
    headers = {"X-Account-Id": "{account}", "X-Quota-Resource": "api_call", "X-Quota-Units": "1"}
    if hook_key is not None:
        headers["X-Quotagate-Key"] = hook_key
    return HttpLoad("GET", "/v1/authz", headers, accounts=accounts)


def route_load(accounts: Accounts, hook_key: str, uri: str) -> HttpLoad:
    """The authz hook on one of the bench config's routes, as nginx asks: the reserve route (a
    hold of 1 credit) or the shadow route (1 credit decided and recorded, nothing charged)."""
    headers = {
        "X-Account-Id": "{account}", "X-Quotagate-Key": hook_key,
        "X-Original-Method": "GET", "X-Original-URI": uri,
    }  # fmt: skip
    return HttpLoad("GET", "/v1/authz", headers, accounts=accounts)


def consume_load(accounts: Accounts, service_key: str) -> HttpLoad:
    return HttpLoad(
        "POST",
        "/v1/accounts/{account}/consume",
        {"Authorization": f"Bearer {service_key}"},
        body='{"resource":"api_call"}',
        accounts=accounts,
    )


async def _accounts_in_redis(run: Run, progress: Progress) -> None:
    if run.redis_accounts_ready:
        return
    progress(f"opening {run.options.spread_accounts + 1} accounts in Redis")
    await run.stage.create_accounts(HOT)
    await run.stage.create_accounts(spread_accounts(run.options.spread_accounts))
    await run.stage.clear_outboxes()
    run.redis_accounts_ready = True


async def _balance(engine: CreditEngine, account: str) -> int:
    return (await engine.get_account(account)).balance


async def _redis_time(engine: CreditEngine, row: Row, before: redis_cpu.Snapshot) -> None:
    """Fill the row's Redis time per charge and per call since ``before``."""
    window = (await redis_cpu.snapshot(engine)).since(before)
    row.redis_us, row.redis_us_per_call = window.usec_per_charge, window.usec_per_call


async def http_group(run: Run, progress: Progress) -> None:
    """The gateway: its floor, the hook and consume, hot and spread."""
    from quotagate.bench import gateway

    await _accounts_in_redis(run, progress)
    keys = await asyncio.to_thread(gateway.prepare, run.stage)
    serve = ServeOptions(run.options.workers)
    spread = spread_accounts(run.options.spread_accounts)
    engine = run.stage.engine
    assert engine is not None
    for count in HOOK_GRANT_COUNTS:
        await _open_with_grants(engine, f"bench-hgrants{count}", count)
    _, member = await _open_member(engine, "bench-hpool")
    with (
        gateway.serving_gateway(run.stage, serve) as app,
        serving("quotagate.bench.floor:create_app", serve, {}) as bare,
    ):
        for name, load, server, base in (
            (FLOOR, HttpLoad("GET", "/healthz"), app, None),
            ("http/bare", HttpLoad("GET", "/healthz"), bare, FLOOR),
            # Each row right after its baseline: what drifts during a run (the machine's other
            # work, Redis's memory) then moves both alike.
            ("hook/hot", hook_load(HOT, keys.hook), app, FLOOR),
            *(
                (f"hook/grants-{n}", hook_load(Accounts(f"bench-hgrants{n}"), keys.hook), app,
                 "hook/hot")
                for n in HOOK_GRANT_COUNTS
            ),
            ("hook/member", hook_load(Accounts(member), keys.hook), app, "hook/hot"),
            ("hook/spread", hook_load(spread, keys.hook), app, FLOOR),
            ("hook/reserve", route_load(spread, keys.hook, "/reserve/x"), app, "hook/spread"),
            ("hook/shadow", route_load(spread, keys.hook, "/shadow/x"), app, "hook/spread"),
            ("consume/hot", consume_load(HOT, keys.service), app, FLOOR),
            ("consume/spread", consume_load(spread, keys.service), app, FLOOR),
        ):  # fmt: skip
            progress(f"measuring {name}")
            before = await _balance(engine, HOT.stem)
            stats = await redis_cpu.snapshot(engine)
            row = await asyncio.to_thread(run.http, name, load, server, base)
            await _redis_time(engine, row, stats)
            charged = before - await _balance(engine, HOT.stem)
            if name.endswith("/hot") and charged < row.count:
                row.note = f"only {charged} credits charged for {row.count} answers"
            if name == "hook/reserve":  # its holds end a second later: none is left behind
                await asyncio.sleep(1.1)
                await expire_all_async(engine)
            await run.stage.clear_outboxes()


async def postgres_group(run: Run, progress: Progress) -> None:
    """The design without quotagate (a Postgres transaction per charge), hot and spread."""
    spread = spread_accounts(run.options.spread_accounts)
    progress(f"loading {spread.count + 1} accounts into Postgres")
    conn = await asyncpg.connect(asyncpg_url(run.stage.database_url))
    try:
        await pgdesign.prepare(conn, [HOT.stem, *spread.all()], CREDITS)
    finally:
        await conn.close()
    env = {pgdesign.URL_ENV: asyncpg_url(run.stage.database_url)}
    serve = ServeOptions(run.options.workers)
    with serving("quotagate.bench.pgdesign:create_app", serve, env) as app:
        for name, accounts in (("postgres/hot", HOT), ("postgres/spread", spread)):
            progress(f"measuring {name}")
            await asyncio.to_thread(run.http, name, hook_load(accounts), app, None)


async def engine_group(run: Run, progress: Progress) -> None:
    """The engine in-process, batched and not, against redis-benchmark on the same script."""
    await _accounts_in_redis(run, progress)
    engine = run.stage.engine
    assert engine is not None
    o = run.options
    unbatched = CreditEngine.from_url(
        run.stage.redis_url, run.stage.config, prefix=run.stage.prefix, batching=False
    )
    try:
        for name, eng in (("engine/in-process", engine), ("engine/unbatched", unbatched)):
            progress(f"measuring {name}")
            before = await _balance(engine, HOT.stem)
            stats = await redis_cpu.snapshot(engine)
            result = await engine_load.engine_load(
                eng, HOT.stem, duration_s=o.duration_s, concurrency=o.concurrency,
                warmup_s=o.warmup_s,
            )  # fmt: skip
            row = run.add(name, result, "redis-benchmark")
            await _redis_time(engine, row, stats)
            if before - await _balance(engine, HOT.stem) < row.count:
                row.note = "fewer credits charged than calls answered"
            await run.stage.clear_outboxes()
    finally:
        await unbatched.aclose()
    for count in GRANT_COUNTS:
        await _grants_row(run, progress, count)
    await _member_row(run, progress)
    if not shutil.which("redis-benchmark"):
        progress("redis-benchmark is not installed (apt-get install redis-tools): no baseline")
        return
    progress("measuring redis-benchmark")
    command = engine_load.consume_command(engine, HOT.stem)
    before = await _balance(engine, HOT.stem)
    stats = await redis_cpu.snapshot(engine)
    result = await asyncio.to_thread(
        engine_load.redis_benchmark,
        run.stage.redis_url, command, duration_s=o.duration_s, concurrency=o.concurrency,
    )  # fmt: skip
    row = run.add("redis-benchmark", result, None, note="same FCALL of consume.lua")
    await _redis_time(engine, row, stats)
    if before - await _balance(engine, HOT.stem) < row.count:
        row.note = "fewer credits charged than calls sent: the script refused some"
    await run.stage.clear_outboxes()


GRANT_COUNTS = (2, 20)
"""The explicit grants of the accounts of the engine/grants-N rows."""

HOOK_GRANT_COUNTS = (1, 2)
"""The explicit grants of the accounts of the hook/grants-N rows."""

GRANT_CREDITS = 10**9
"""What each of those grants holds: no run spends the first one out."""


async def _open_with_grants(engine: CreditEngine, account: str, count: int) -> None:
    """An account holding ``count`` explicit grants besides its monthly credits, as a busy
    one might: priority 40, so that each charge draws on one and writes the list back, and
    every other one expiring in 30 days, so that each charge reads the clock and checks
    them all for expiry."""
    await engine.upsert_account(account)
    expires = datetime.now(UTC) + timedelta(days=30)
    for i in range(count):
        await engine.grant(
            account, GRANT_CREDITS, priority=40, expires_at=expires if i % 2 else None
        )


async def _grants_row(run: Run, progress: Progress, count: int) -> None:
    """engine/in-process on an account of ``count`` explicit grants (engine/in-process)."""
    engine = run.stage.engine
    assert engine is not None
    name, account = f"engine/grants-{count}", f"bench-grants{count}"
    await _open_with_grants(engine, account, count)
    progress(f"measuring {name}")
    before = await _balance(engine, account)
    stats = await redis_cpu.snapshot(engine)
    o = run.options
    result = await engine_load.engine_load(
        engine, account, duration_s=o.duration_s, concurrency=o.concurrency, warmup_s=o.warmup_s
    )
    row = run.add(name, result, "engine/in-process")
    await _redis_time(engine, row, stats)
    if before - await _balance(engine, account) < row.count:
        row.note = "fewer credits charged than calls answered"
    await run.stage.clear_outboxes()


async def _open_member(engine: CreditEngine, pool: str) -> tuple[str, str]:
    """A pool with GRANT_CREDITS and a member with a limit no run reaches: the pool and the
    member's ids."""
    member = f"{pool}~bench-member"
    await engine.upsert_account(pool)
    await engine.credit(pool, GRANT_CREDITS, "earn")
    await engine.upsert_account(member, member_limit=GRANT_CREDITS)
    return pool, member


async def _member_row(run: Run, progress: Progress) -> None:
    """engine/in-process on a member of a pool, with a limit no run reaches (engine/in-process):
    the pool pays every charge."""
    engine = run.stage.engine
    assert engine is not None
    name = "engine/member"
    pool, member = await _open_member(engine, "bench-pool")
    progress(f"measuring {name}")
    before = await _balance(engine, pool)
    stats = await redis_cpu.snapshot(engine)
    o = run.options
    result = await engine_load.engine_load(
        engine, member, duration_s=o.duration_s, concurrency=o.concurrency, warmup_s=o.warmup_s
    )
    row = run.add(name, result, "engine/in-process")
    await _redis_time(engine, row, stats)
    if before - await _balance(engine, pool) < row.count:
        row.note = "fewer credits charged than calls answered"
    await run.stage.clear_outboxes()


async def batch_group(run: Run, progress: Progress) -> None:
    """Batch charges through the gateway against redis-benchmark pipelined 16 deep."""
    from quotagate.bench import batch

    await _accounts_in_redis(run, progress)
    await batch.measure(run, progress)


async def nginx_group(run: Run, progress: Progress) -> None:
    """wrk through real nginx, with the hook in auth_request and without (when installed)."""
    from quotagate.bench import nginx

    await _accounts_in_redis(run, progress)
    await nginx.measure(run, progress)


async def flush_group(run: Run, progress: Progress) -> None:
    """The ledger flush against a bare COPY of the same rows."""
    from quotagate.bench import flush

    await flush.measure(run, progress)


async def memory_group(run: Run, progress: Progress) -> None:
    """Redis bytes kept per hook request, per API charge with a key, per outbox entry."""
    from quotagate.bench import memory

    await memory.measure(run, progress)


async def cluster_group(run: Run, progress: Progress) -> None:
    """The engine and the hook on a 3-master Redis Cluster next to one Redis, both our own."""
    from quotagate.bench import cluster

    await cluster.measure(run, progress)


GROUPS: dict[str, Callable[[Run, Progress], Awaitable[None]]] = {
    "http": http_group,
    "postgres": postgres_group,
    "engine": engine_group,
    "batch": batch_group,
    "nginx": nginx_group,
    "flush": flush_group,
    "memory": memory_group,
    "cluster": cluster_group,
}
