"""The flush as RQ jobs: deduplicated enqueues, backoff while PostgreSQL fails, the early
trigger. Against a private Redis (RQ's keys stay off the shared server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue
from tests.ledger.support import config_text
from tests.support.servers import RedisProcess, free_port, redis_process

from quotagate.config import parse_config
from quotagate.engine import CreditEngine
from quotagate.engine.keys import flush_failures, flush_queued_flag
from quotagate.jobs import queues, runtime
from quotagate.jobs.flush import enqueue_flush, enqueue_flushes, flush_partition
from quotagate.jobs.trigger import EarlyFlush
from quotagate.settings import Secret, Settings

PREFIX = "jt"


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    with redis_process() as s:
        yield s


def _settings(server: RedisProcess, database_url: str, tmp_path: Path) -> Settings:
    path = tmp_path / "config.toml"
    path.write_text(config_text(8))
    return Settings(
        redis_url=Secret(server.url), queue_url=Secret(server.url),
        database_url=Secret(database_url), config_path=str(path), key_prefix=PREFIX,
        flush_lease_seconds=2,
    )  # fmt: skip


@pytest.fixture
def installed(server: RedisProcess, ledger_url: str, tmp_path: Path) -> Iterator[Settings]:
    settings = _settings(server, ledger_url, tmp_path)
    rt = runtime.install(settings)

    async def seed() -> None:
        engine = await rt.engine()
        await engine.initialize()
        for i in range(20):
            await engine.upsert_account(f"jobs-{tmp_path.name}-{i}")

    rt.run(seed())
    yield settings
    runtime.reset()


def _waiting(settings: Settings) -> dict[int, int]:
    rt = runtime.current()

    async def read() -> dict[int, int]:
        engine = await rt.engine()
        out = {}
        for p in range(engine.config.partitions):
            n = int(await engine.redis.xlen(engine.keys.outbox(p)))
            if n:
                out[p] = n
        return out

    return rt.run(read())


def test_enqueue_skips_a_partition_already_queued(installed: Settings) -> None:
    conn = runtime.current().queue_redis
    queue = queues.flush_queue(installed, conn)
    assert enqueue_flush(queue, PREFIX, 3)
    assert not enqueue_flush(queue, PREFIX, 3)
    assert enqueue_flush(queue, PREFIX, 4)
    assert queue.count == 2
    ttl = conn.pttl(flush_queued_flag(PREFIX, 3))
    assert 0 < ttl <= 30_000


def test_the_schedule_job_enqueues_each_waiting_partition_once(installed: Settings) -> None:
    waiting = _waiting(installed)
    assert len(waiting) > 1
    assert enqueue_flushes() == len(waiting)
    assert enqueue_flushes() == 0  # all still queued
    queue = queues.flush_queue(installed, runtime.current().queue_redis)
    assert sorted(job.args[0] for job in queue.get_jobs()) == sorted(waiting)


def test_the_flush_job_flushes_and_clears_its_flag(installed: Settings) -> None:
    conn = runtime.current().queue_redis
    waiting = _waiting(installed)
    p = next(iter(waiting))
    enqueue_flush(queues.flush_queue(installed, conn), PREFIX, p)
    result = flush_partition(p)
    assert result["status"] == "flushed"
    assert (result["inserted"], result["events"], result["deleted"]) == (
        waiting[p] // 2, waiting[p] // 2, waiting[p],
    )  # fmt: skip
    assert conn.exists(flush_queued_flag(PREFIX, p)) == 0
    assert p not in _waiting(installed)
    with pytest.raises(ValueError, match=r"partition 8 is not in 0\.\.7"):
        flush_partition(8)


def test_postgres_down_backs_off_doubling_and_loses_nothing(
    installed: Settings, ledger_url: str
) -> None:
    waiting = _waiting(installed)
    p = next(iter(waiting))
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    settings = Settings(**{**installed.__dict__, "database_url": Secret(down)})
    rt = runtime.install(settings)
    conn = rt.queue_redis
    queue = queues.flush_queue(settings, conn)

    first = flush_partition(p)
    assert first == {"partition": p, "status": "postgres_unavailable", "retry_in": 1.0}
    assert 0 < conn.pttl(flush_queued_flag(PREFIX, p)) <= 1000
    assert not enqueue_flush(queue, PREFIX, p)  # backing off: nothing enqueued
    second = flush_partition(p)
    assert second["retry_in"] == 2.0
    assert 1000 < conn.pttl(flush_queued_flag(PREFIX, p)) <= 2000
    assert int(conn.get(flush_failures(PREFIX, p)) or 0) == 2
    assert _waiting(settings)[p] == waiting[p]  # the outbox kept everything

    runtime.install(installed)  # PostgreSQL is back
    assert flush_partition(p)["status"] == "flushed"
    assert runtime.current().queue_redis.exists(flush_failures(PREFIX, p)) == 0
    assert p not in _waiting(installed)


async def test_early_flush_enqueues_past_the_threshold_once(server: RedisProcess) -> None:
    engine = CreditEngine.from_url(server.url, parse_config(config_text(8)), prefix=PREFIX)
    await engine.initialize()
    conn = redis.Redis.from_url(server.url)
    queue = Queue(queues.flush_queue_name(PREFIX), connection=conn)
    trigger = EarlyFlush(engine, queue, PREFIX, threshold=10)
    try:
        a = "trigger-account"
        p = engine.keys.partition_of(a)
        await engine.upsert_account(a, tier="pro")
        for _ in range(7):
            await engine.consume(a, "api_call", 1)
        assert not await trigger(p)  # 9 entries
        await engine.consume(a, "api_call", 1)
        assert await trigger(p)
        assert not await trigger(p)
        assert (trigger.enqueued, queue.count) == (1, 1)
        assert queue.get_jobs()[0].args == (p,)
    finally:
        await engine.aclose()
        conn.close()


def test_credit_redis_down_backs_off_too(installed: Settings) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings(**{**installed.__dict__, "redis_url": Secret(down)})
    rt = runtime.install(settings)
    result = flush_partition(2)
    assert result == {"partition": 2, "status": "redis_unavailable", "retry_in": 1.0}
    assert 0 < rt.queue_redis.pttl(flush_queued_flag(PREFIX, 2)) <= 1000
