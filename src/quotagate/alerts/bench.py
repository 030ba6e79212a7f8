"""Charging and flushing with alerts and webhooks configured, against the same without them.

    python -m quotagate.alerts.bench [--accounts 2000] [--charges 40000] [--rounds 3] [--json]

uses QUOTAGATE_REDIS_URL (two throwaway key prefixes) and QUOTAGATE_DATABASE_URL's server (a
database of its own, dropped at the end). Two engines differ only in their config: ``plain``
has no ``[alerts]``; ``alerts`` has a balance threshold and an unusual-consumption rule for
every account, expiry warnings, and a webhook endpoint (a local receiver that answers after
a second) for every kind. Each round, for each of the two in turn: ``charges`` consumes
spread over ``accounts`` accounts, 50 at a time, through the engine (charges/s), then one
flush of everything (rows/s), then, for ``alerts``, one webhook delivery round. The report
gives each side's median round, and the alerts raised.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from quotagate.alerts.webhooks import create_endpoint, deliver_due
from quotagate.config import Config, parse_config
from quotagate.engine import CreditEngine
from quotagate.engine.keys import all_keys_pattern
from quotagate.ledger import Ledger, flush_all
from quotagate.ledger.migrate import upgrade
from quotagate.ledger.urls import asyncpg_dsn

CONCURRENCY = 50

BASE_CONFIG = """
partitions = 8
opening_grant = true
[resources]
api_call = 1
[tiers.free]
credit_limit = 1000000
monthly_grant = 1000000
renewal = "reset"
"""

ALERTS_CONFIG = """
[[alerts.balance]]
below_percent = 99.999
[[alerts.consumption]]
window_hours = 1
baseline_windows = 24
multiple = 2.0
min_credits = 10
[alerts.expiry]
warn_hours_before = 648
[alerts.webhooks]
timeout_ms = 2000
"""
"""Rules that fire: every account goes below 99.999% of its grant after its 11th charge, and
spends more than 10 credits in an hour it has no usual rate for; in the last 27 days of a month
(warn_hours_before, its largest), each also gets its expiring monthly credits warning."""


@dataclass
class Side:
    charges_per_second: list[float] = field(default_factory=list)
    flush_rows_per_second: list[float] = field(default_factory=list)


@dataclass
class AlertsBench:
    accounts: int
    charges: int
    rounds: int
    plain: dict[str, float]
    alerts: dict[str, float]
    alerts_raised: int
    deliveries_tried: int


class _SlowReceiver:
    """Answers every webhook after a second, in its own thread."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                time.sleep(1.0)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def _charge(engine: CreditEngine, accounts: list[str], charges: int) -> float:
    queue = iter(range(charges))

    async def one_lane() -> None:
        for i in queue:
            await engine.consume(accounts[i % len(accounts)], "api_call")

    started = time.perf_counter()
    await asyncio.gather(*(one_lane() for _ in range(CONCURRENCY)))
    return charges / (time.perf_counter() - started)


async def _flush(engine: CreditEngine, ledger: Ledger) -> float:
    started = time.perf_counter()
    results = await flush_all(engine, ledger)
    return sum(r.transactions for r in results) / (time.perf_counter() - started)


def _median(side: Side) -> dict[str, float]:
    return {
        "charges_per_second": round(statistics.median(side.charges_per_second)),
        "flush_rows_per_second": round(statistics.median(side.flush_rows_per_second)),
    }


async def measure_alerts(
    redis_url: str, database_url: str, *, accounts: int, charges: int, rounds: int
) -> AlertsBench:
    name = f"qg_alerts_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    configs: dict[str, Config] = {
        "plain": parse_config(BASE_CONFIG),
        "alerts": parse_config(BASE_CONFIG + ALERTS_CONFIG),
    }
    engines = {
        side: CreditEngine.from_url(redis_url, config, prefix=f"alertbench{name[-8:]}{side}")
        for side, config in configs.items()
    }
    receiver = _SlowReceiver()
    try:
        await asyncio.to_thread(upgrade, url)
        ledger = await Ledger.connect(url)
        try:
            return await _run(engines, ledger, receiver.url, accounts, charges, rounds)
        finally:
            await ledger.aclose()
    finally:
        receiver.close()
        for engine in engines.values():
            pattern = all_keys_pattern(engine.keys.prefix)
            keys = [k async for k in engine.redis.scan_iter(match=pattern)]
            for i in range(0, len(keys), 500):
                await engine.redis.delete(*keys[i : i + 500])
            await engine.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _run(
    engines: dict[str, CreditEngine],
    ledger: Ledger,
    receiver_url: str,
    accounts: int,
    charges: int,
    rounds: int,
) -> AlertsBench:
    await create_endpoint(ledger, receiver_url, ["*"])
    names = [f"acct-{i}" for i in range(accounts)]
    for engine in engines.values():
        await engine.initialize()
        for a in names:
            await engine.upsert_account(a)
        await flush_all(engine, ledger)
    sides = {side: Side() for side in engines}
    tried = 0
    policy = engines["alerts"].config.alerts.webhooks
    for _ in range(rounds):
        for side, engine in engines.items():
            sides[side].charges_per_second.append(await _charge(engine, names, charges))
            sides[side].flush_rows_per_second.append(await _flush(engine, ledger))
            if side == "alerts":
                tried += (await deliver_due(ledger, policy)).sent
    async with ledger.pool.acquire() as conn:
        raised = await conn.fetchval("SELECT count(*) FROM alerts")
    return AlertsBench(
        accounts, charges, rounds, _median(sides["plain"]), _median(sides["alerts"]), raised,
        tried,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    from quotagate.bench.report import run_measurement

    run_measurement(
        "python -m quotagate.alerts.bench",
        {"accounts": 2000, "charges": 40_000, "rounds": 3}, measure_alerts, argv, width=24,
    )  # fmt: skip


if __name__ == "__main__":
    main()
