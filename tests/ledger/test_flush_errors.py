"""quotagate_ledger_flush_errors_total: a batch PostgreSQL fails is counted, and the outbox
keeps its entries for the next flush."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from tests.jobs.processes import QuotagateProcess
from tests.ledger.support import worker_env
from tests.support.servers import free_port

from quotagate.engine import CreditEngine
from quotagate.errors import BackendUnavailable
from quotagate.ledger import Ledger, flush_partition
from quotagate.ledger import flush as ledger_flush

Acct = Callable[[str], str]

TERMINATE_OPEN_TRANSACTIONS = """
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))
FROM pg_stat_activity
WHERE datname = current_database() AND state = 'idle in transaction'
  AND pid <> pg_backend_pid()
"""
"""Ends every connection of this database that holds a transaction open: at the flush's
``before_commit`` point that is the flush's own (the session's database is this run's)."""


def flush_errors(kind: str) -> float:
    return REGISTRY.get_sample_value("quotagate_ledger_flush_errors_total", {"kind": kind}) or 0.0


async def test_a_batch_whose_connection_postgres_ends_counts_one_flush_error(
    lengine: CreditEngine,
    ledger: Ledger,
    ledger_url: str,
    acct: Acct,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    account = acct("flush-error")
    await lengine.upsert_account(account)
    await lengine.consume(account, "api_call", 2)
    partition = lengine.keys.partition_of(account)
    stream = lengine.keys.outbox(partition)
    waiting = await lengine.redis.xlen(stream)
    terminated: list[int] = []

    async def end_the_flush_connection(point: str) -> None:
        if point != "before_commit":
            return
        conn = await asyncpg.connect(ledger_url)
        try:
            terminated.append(await conn.fetchval(TERMINATE_OPEN_TRANSACTIONS))
        finally:
            await conn.close()

    monkeypatch.setattr(ledger_flush, "pause_point", end_the_flush_connection)
    counted = flush_errors("batch")

    with pytest.raises(BackendUnavailable):
        await flush_partition(lengine, ledger, partition)

    assert terminated and all(n >= 1 for n in terminated)  # PostgreSQL itself ended each try
    assert flush_errors("batch") == counted + 1  # one failed flush, however many tries
    assert await lengine.redis.xlen(stream) == waiting

    monkeypatch.undo()
    result = await flush_partition(lengine, ledger, partition)
    assert result.deleted == waiting
    assert flush_errors("batch") == counted + 1


def test_a_worker_serves_its_flush_counters_on_its_metrics_port(
    lengine: CreditEngine, ledger_url: str, redis_url: str, queue_url: str, key_prefix: str,
    config_file: str, tmp_path: Path,
) -> None:  # fmt: skip
    port = free_port()
    env = worker_env(redis_url, ledger_url, key_prefix, Path(config_file))
    env["QUOTAGATE_QUEUE_URL"] = queue_url  # a standalone Redis, also when the data is on a cluster
    worker = QuotagateProcess(
        ["worker", "--name", "metrics", "--metrics-port", str(port)], env, tmp_path / "metrics.log"
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert worker.alive(), worker.output()
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, worker.output()
                time.sleep(0.2)
        assert "# TYPE quotagate_ledger_flush_errors_total counter" in text
        assert "# TYPE quotagate_ledger_quarantined_total counter" in text
    finally:
        worker.stop()
