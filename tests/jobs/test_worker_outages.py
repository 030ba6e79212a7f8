"""The worker's own loop, step by step, against a real Redis that goes away: each step that
talks to Redis outside a job waits the outage out instead of ending the loop (RQ quits its
loop on any Redis error there: "found an unhandled exception, quitting")."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
from rq import Queue
from rq.exceptions import StopRequested
from tests.support.servers import RedisProcess, redis_process

from quotagate.jobs import worker as worker_module
from quotagate.jobs.worker import LedgerWorker

OUTAGE_SECONDS = 2.0


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    with redis_process() as s:
        yield s


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "RETRY_FIRST_SECONDS", 0.2)
    monkeypatch.setattr(worker_module, "RETRY_MAX_SECONDS", 0.5)


@pytest.fixture
def worker(server: RedisProcess) -> Iterator[LedgerWorker]:
    """A worker on the private Redis; its connections closed afterwards (a socket left open
    to a restarted server is a ResourceWarning, an error in this suite)."""
    conn = redis.Redis.from_url(server.url, socket_timeout=5)
    yield LedgerWorker([Queue("qg-outage", connection=conn)], connection=conn, name="qg-outage")
    conn.close()
    conn.connection_pool.disconnect()


def _outage(server: RedisProcess) -> threading.Thread:
    """Stop Redis now; start it again on the same port after OUTAGE_SECONDS."""
    server.stop()
    timer = threading.Timer(OUTAGE_SECONDS, server.start)
    timer.start()
    return timer


def test_waiting_for_the_next_job_rides_out_an_outage(
    server: RedisProcess, worker: LedgerWorker
) -> None:
    """The step that marks the worker idle, then waits for a job, with Redis down when it
    starts: it waits for Redis, then for a job, and ends on its idle time without raising."""
    worker.register_birth()  # type: ignore[no-untyped-call]  # RQ leaves it unannotated
    timer = _outage(server)
    try:
        assert worker.dequeue_job_and_maintain_ttl(1, max_idle_time=2) is None
    finally:
        timer.join()
    assert worker.connection.hget(worker.key, "state") == b"idle"


def test_marking_its_state_rides_out_an_outage(server: RedisProcess, worker: LedgerWorker) -> None:
    timer = _outage(server)
    try:
        worker.set_state("busy")
    finally:
        timer.join()
    assert worker.connection.hget(worker.key, "state") == b"busy"


def test_a_stop_asked_during_an_outage_ends_the_wait(
    server: RedisProcess, worker: LedgerWorker
) -> None:
    """SIGTERM while Redis is away (the stack stopping, Redis with it): RQ only marks the stop
    while a job runs and waits for the job; the job's wait for Redis, and the loop's, end on
    it instead of waiting for a Redis that is not coming back."""
    server.stop()
    worker._stop_requested = True  # what RQ's SIGTERM handler sets while a job runs
    with pytest.raises(StopRequested):
        worker.set_state("busy")  # a loop step: back to RQ's loop, which ends on StopRequested
    # A job's bookkeeping met the outage: execute_job returns, and RQ's loop sees the stop.
    stopped = worker_module.wait_for_redis(
        worker.connection, "worker", ConnectionError("gone"), worker._stopping
    )
    assert stopped is False
