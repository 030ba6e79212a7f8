"""`quotagate worker` and `quotagate scheduler` ride out outages: Redis stopped for a few seconds,
then for longer than any timeout of theirs, then PostgreSQL stopped under a flush. The
processes live, say once that they lost Redis and once that they have it again (no traceback
per retry), and flushes enqueued afterwards run."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import EngineFactory
from tests.jobs.processes import QuotagateProcess, quotagate_env
from tests.ledger.support import postgres_process
from tests.support.servers import RedisProcess, redis_process

from quotagate.engine import CreditEngine
from quotagate.ledger import Ledger, outbox_lag, upgrade

CONFIG = """
partitions = 2
[resources]
unit = 1
[tiers.free]
credit_limit = 1000
monthly_grant = 100
"""

SHORT_OUTAGE_SECONDS = 3
LONG_OUTAGE_SECONDS = 25
"""Longer than the clients' socket and connect timeouts (5 s) and RQ's dequeue wait."""

LOST = "lost Redis"
BACK = "Redis is back"


async def _drained(engine: CreditEngine, procs: list[QuotagateProcess], within: float) -> None:
    deadline = time.monotonic() + within
    while (await outbox_lag(engine)).total:
        for p in procs:
            assert p.alive(), p.output()
        assert time.monotonic() < deadline, "\n".join(p.output() for p in procs)
        await asyncio.sleep(0.2)


async def _charge(engine: CreditEngine, accounts: list[str]) -> None:
    for a in accounts:
        await engine.consume(a, "unit")


async def _ledger_credits(database_url: str, accounts: list[str]) -> dict[str, int]:
    """Each account's credits in the ledger's snapshot."""
    ledger = await Ledger.connect(database_url)
    try:
        return {a: s.credits for a, s in (await ledger.snapshots(accounts)).items()}
    finally:
        await ledger.aclose()


def _outage(server: RedisProcess, seconds: float, procs: list[QuotagateProcess]) -> None:
    server.stop()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for p in procs:
            assert p.alive(), p.output()
        time.sleep(0.2)
    server.start()


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    with redis_process(appendonly=True) as server:
        yield server


async def test_worker_and_scheduler_ride_out_redis_outages(
    redis_server: RedisProcess,
    make_engine: EngineFactory,
    own_ledger: Ledger,
    own_ledger_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    engine = await make_engine(CONFIG, url=redis_server.url)
    accounts = [f"out-{i}" for i in range(10)]
    for a in accounts:
        await engine.upsert_account(a)
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    env = quotagate_env(redis_server.url, own_ledger_url, key_prefix, config)
    worker = QuotagateProcess(["worker"], env, tmp_path / "worker.log")
    scheduler = QuotagateProcess(["scheduler"], env, tmp_path / "scheduler.log")
    procs = [worker, scheduler]
    try:
        await _drained(engine, procs, 30)
        for outages, seconds in enumerate((SHORT_OUTAGE_SECONDS, LONG_OUTAGE_SECONDS), 1):
            await asyncio.sleep(1.1)  # appendfsync everysec: what was written is on disk
            await asyncio.to_thread(_outage, redis_server, seconds, procs)
            await _charge(engine, accounts)  # after the outage: flushed by the same processes
            await _drained(engine, procs, 60)
            for p in procs:
                out = p.output()
                assert (out.count(LOST), out.count(BACK)) == (outages, outages), out
        for p in procs:
            assert "Traceback" not in p.output(), p.output()
    finally:
        scheduler.stop()
        worker.stop()
    for a in accounts:
        assert (await engine.get_account(a)).balance == 98


async def test_worker_and_scheduler_stop_on_sigterm_when_redis_stops_with_them(
    redis_server: RedisProcess,
    make_engine: EngineFactory,
    own_ledger_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    """What `docker compose down`, or the kernel when `quotagate up` is killed, does: Redis and
    the processes get their SIGTERM together. A stop asked for while Redis goes away is a
    stop, not an outage to wait out (RQ's scheduler says goodbye to Redis on its way out, and
    that failing read as an outage: the scheduler then waited for a Redis that never came)."""
    await make_engine(CONFIG, url=redis_server.url)
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    env = quotagate_env(redis_server.url, own_ledger_url, key_prefix, config)
    procs = [
        QuotagateProcess([name], env, tmp_path / f"{name}.log") for name in ("worker", "scheduler")
    ]
    try:
        await asyncio.sleep(4)  # both at work: the scheduler between its one-second rounds
        for p in procs:
            assert p.alive(), p.output()
        redis_server.stop()
        for p in procs:
            p.proc.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                await asyncio.to_thread(p.proc.wait, 15)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running 15 s after SIGTERM:\n{p.output()}")
    finally:
        for p in procs:
            p.kill()
        redis_server.start()  # for the fixture's engine to clean up after itself


async def test_the_worker_lives_through_postgres_down_during_flushes(
    redis_server: RedisProcess, make_engine: EngineFactory, key_prefix: str, tmp_path: Path
) -> None:
    engine = await make_engine(CONFIG, url=redis_server.url)
    accounts = [f"pg-{i}" for i in range(10)]
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    with postgres_process() as pg:
        await asyncio.to_thread(upgrade, pg.url)
        env = quotagate_env(redis_server.url, pg.url, key_prefix, config)
        worker = QuotagateProcess(["worker"], env, tmp_path / "worker.log")
        scheduler = QuotagateProcess(["scheduler"], env, tmp_path / "scheduler.log")
        try:
            for a in accounts:
                await engine.upsert_account(a)
            await _drained(engine, [worker, scheduler], 30)
            pg.stop()
            await _charge(engine, accounts)
            await asyncio.sleep(8)  # flushes fail meanwhile, backing off
            assert worker.alive() and scheduler.alive(), worker.output()
            assert (await outbox_lag(engine)).total == len(accounts)
            pg.start()
            await _drained(engine, [worker, scheduler], 60)
        finally:
            scheduler.stop()
            worker.stop()
        credits = await _ledger_credits(pg.url, accounts)
    assert credits == dict.fromkeys(accounts, 99)


async def test_a_worker_started_while_postgres_is_down_waits_for_it(
    redis_server: RedisProcess, make_engine: EngineFactory, key_prefix: str, tmp_path: Path
) -> None:
    """A worker (re)started during an outage, as a supervisor would, does not exit: it says
    once that it waits, and flushes once PostgreSQL is back."""
    engine = await make_engine(CONFIG, url=redis_server.url)
    accounts = [f"late-{i}" for i in range(5)]
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    with postgres_process() as pg:
        await asyncio.to_thread(upgrade, pg.url)
        pg.stop()
        env = quotagate_env(redis_server.url, pg.url, key_prefix, config)
        worker = QuotagateProcess(["worker"], env, tmp_path / "worker.log")
        scheduler = QuotagateProcess(["scheduler"], env, tmp_path / "scheduler.log")
        try:
            for a in accounts:
                await engine.upsert_account(a)
            await _charge(engine, accounts)
            deadline = time.monotonic() + 60  # a loaded machine starts Python slowly
            while "waiting for PostgreSQL" not in worker.output():
                assert worker.alive(), worker.output()
                assert time.monotonic() < deadline, worker.output()
                await asyncio.sleep(0.2)
            await asyncio.sleep(3)  # more attempts meanwhile, and still one line
            assert worker.alive(), worker.output()
            assert worker.output().count("waiting for PostgreSQL") == 1, worker.output()
            pg.start()
            await _drained(engine, [worker, scheduler], 60)
            assert "PostgreSQL answers after" in worker.output()
        finally:
            scheduler.stop()
            worker.stop()
        credits = await _ledger_credits(pg.url, accounts)
    assert credits == dict.fromkeys(accounts, 99)
