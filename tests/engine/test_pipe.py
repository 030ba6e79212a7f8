"""Batched script calls go over a connection of their own (quotagate.engine.pipe): a Redis that
stops answering fails the waiting calls after the client's socket timeout, a lost connection
fails the calls on it at once, the next call connects anew, scripts a restart or FUNCTION FLUSH
dropped are loaded once for all the calls that missed them, and closing fails what waits and
leaves nothing open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from redis.asyncio import Redis
from tests.engine.configs import PLAIN
from tests.support.servers import RedisProcess, redis_process

from quotagate.api.gateway import redis_client
from quotagate.config import load_config, parse_config
from quotagate.engine import CreditEngine
from quotagate.engine.batching import ScriptRunner
from quotagate.engine.pipe import ReplyPipe
from quotagate.errors import BackendUnavailable

TIMEOUT = 0.5
"""The socket timeout of the engines built here: how long a batch may wait for its replies."""

PREFIX = "pipetest"
"""Every server here is private and thrown away: one prefix is enough."""

FastEngine = Callable[..., Awaitable[CreditEngine]]


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    # Append-only: what was written before a kill is there again after the restart.
    with redis_process(appendonly=True) as s:
        yield s


@pytest.fixture
async def fast_engine(server: RedisProcess) -> AsyncIterator[FastEngine]:
    """Initialised engines on the private server, with a short socket timeout."""
    made: list[CreditEngine] = []

    async def factory(socket_timeout: float = TIMEOUT) -> CreditEngine:
        redis = Redis.from_url(
            server.url,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=1,
        )
        engine = CreditEngine(redis, parse_config(PLAIN), prefix=PREFIX)
        made.append(engine)
        await engine.initialize()
        await engine.upsert_account("acct")
        await engine.credit("acct", 100)
        return engine

    yield factory
    for engine in made:
        await engine.aclose()


def _state(pid: int) -> str:
    # /proc/<pid>/stat: "pid (comm) state ...": the state follows the last parenthesis.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@contextlib.contextmanager
def frozen(server: RedisProcess) -> Iterator[None]:
    """The server stopped (SIGSTOP): it keeps its sockets and reads nothing until it goes on."""
    assert server.proc is not None
    pid = server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 5
        while _state(pid) != "T":
            assert time.monotonic() < deadline, "redis-server did not stop"
            time.sleep(0.005)
        yield
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(pid, signal.SIGCONT)


def pipe_of(engine: CreditEngine) -> ReplyPipe:
    assert isinstance(engine.runner, ScriptRunner), "a standalone engine"
    pipe = engine.runner._pipe
    assert isinstance(pipe, ReplyPipe), pipe  # a real socket: never the pooled fallback here
    return pipe


async def failures(
    calls: list[asyncio.Task[Any]], within: float = 10
) -> tuple[list[BaseException], float]:
    """Every call's error (each one must fail) and how long the last took to fail."""
    started = time.monotonic()
    async with asyncio.timeout(within):  # a broken promise fails here instead of hanging
        results = await asyncio.gather(*calls, return_exceptions=True)
    waited = time.monotonic() - started
    assert all(isinstance(r, BackendUnavailable) for r in results), results
    return [r for r in results if isinstance(r, BaseException)], waited


async def test_a_redis_that_stops_answering_fails_the_waiting_calls_after_the_timeout(
    server: RedisProcess, fast_engine: FastEngine
) -> None:
    engine = await fast_engine()
    await engine.consume("acct", "unit")
    first = pipe_of(engine)
    with frozen(server):
        calls = [asyncio.create_task(engine.consume("acct", "unit")) for _ in range(5)]
        _, waited = await failures(calls)
        assert TIMEOUT * 0.9 <= waited < TIMEOUT + 1.0
        assert first.closed
        # A call made while it still does not answer is not left waiting either.
        _, waited = await failures([asyncio.create_task(engine.consume("acct", "unit"))])
        assert waited < 2 * TIMEOUT + 1.0
    # It answers again: the next call connects anew.
    charged = await engine.consume("acct", "unit")
    assert pipe_of(engine) is not first
    balance = (await engine.get_account("acct")).balance
    assert charged.remaining == balance
    # 99 before; each of the 6 calls that failed ran at most once (they may have run when
    # the server went on: their replies were lost, not their commands); then this one.
    assert 99 - 6 - 1 <= balance <= 99 - 1


async def test_calls_in_flight_when_redis_is_killed_fail_at_once_and_a_restart_is_reconnected(
    server: RedisProcess, fast_engine: FastEngine
) -> None:
    engine = await fast_engine(socket_timeout=5)
    await engine.consume("acct", "unit")
    assert server.proc is not None
    with frozen(server):
        calls = [asyncio.create_task(engine.consume("acct", "unit")) for _ in range(5)]
        await asyncio.sleep(0.1)  # written: the server holds them unread
        assert not any(c.done() for c in calls)
        server.proc.kill()
        server.proc.wait()
        _, waited = await failures(calls)
        assert waited < 1.0  # the connection's loss, not the 5 s reply timeout
    server.proc = None
    server.start()  # same port, same append-only file; its scripts are gone
    charged = await engine.consume("acct", "unit")
    # The calls the killed server never read never ran; the one before them did, once.
    assert charged.remaining == 98
    assert (await engine.get_account("acct")).balance == 98


async def test_a_restart_between_calls_fails_no_call_of_the_gateways_engine(
    server: RedisProcess,
) -> None:
    # The engine as the gateway builds it (its client, its config).
    engine = CreditEngine(redis_client(server.url), load_config(), prefix=PREFIX)
    try:
        await engine.initialize()
        await engine.upsert_account("acct", tier="pro")  # the pipe takes the pool's connection
        await engine.get_account("acct")  # and redis-py's pool opens another
        server.stop()
        server.start()
        await asyncio.sleep(0.1)  # the loop runs on (the blocking start() held it)
        # The pipe saw its connection closed and connects anew; the scripts the restart
        # dropped are loaded again through the pool, whose connection Redis closed too.
        results = await asyncio.gather(*(engine.consume("acct", "api_call") for _ in range(5)))
        assert sorted(r.remaining for r in results) == [995, 996, 997, 998, 999]
    finally:
        await engine.aclose()


def test_under_uvloop_as_the_gateway_serves_batches_take_over_the_connection(
    server: RedisProcess,
) -> None:
    async def run() -> None:
        redis = Redis.from_url(server.url, decode_responses=True, socket_timeout=TIMEOUT)
        engine = CreditEngine(redis, parse_config(PLAIN), prefix=PREFIX)
        try:
            await engine.initialize()
            await engine.upsert_account("acct")
            await engine.credit("acct", 100)
            first = pipe_of(engine)  # not the pooled fallback: uvloop has sockets too
            with frozen(server):
                calls = [asyncio.create_task(engine.consume("acct", "unit")) for _ in range(3)]
                _, waited = await failures(calls)
                assert TIMEOUT * 0.9 <= waited < TIMEOUT + 1.0
            await engine.consume("acct", "unit")
            assert pipe_of(engine) is not first
            started = time.monotonic()
            await engine.redis.aclose()
            await engine.redis.connection_pool.disconnect()
            assert time.monotonic() - started < 1.0
        finally:
            await engine.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


async def test_closing_the_client_after_batched_calls_returns_at_once(
    server: RedisProcess,
) -> None:
    # From the URL as the library's users build it: a wait for a close that never comes would
    # end only at its 5 s connect timeout.
    engine = CreditEngine.from_url(server.url, load_config(), prefix=PREFIX)
    try:
        await engine.initialize()
        await engine.upsert_account("acct", tier="free")
        await asyncio.gather(*(engine.consume("acct", "api_call") for _ in range(10)))
        pipe = pipe_of(engine)
        started = time.monotonic()
        await engine.redis.aclose()
        await engine.redis.connection_pool.disconnect()
        assert time.monotonic() - started < 1.0
        assert pipe.closed
        # The client may be used again: the next batched call connects anew.
        assert (await engine.consume("acct", "api_call")).remaining == 89
        assert pipe_of(engine) is not pipe
    finally:
        started = time.monotonic()
        await engine.aclose()
        assert time.monotonic() - started < 1.0


async def test_aclose_leaves_no_connection_of_the_engine_on_the_server(
    server: RedisProcess, fast_engine: FastEngine
) -> None:
    observer = Redis.from_url(server.url, decode_responses=True)
    try:
        mine = str(await observer.client_id())

        async def engine_clients() -> set[str]:
            listed: list[dict[str, str]] = await observer.client_list()
            return {c["addr"] for c in listed if c["id"] != mine}

        async def until_gone(*addrs: str) -> None:
            """Until the server has closed these connections (every one, when none is named)."""
            deadline = time.monotonic() + 2
            while True:
                listed = await engine_clients()
                if not (listed & set(addrs) if addrs else listed):
                    return
                assert time.monotonic() < deadline, listed
                await asyncio.sleep(0.01)

        engine = await fast_engine()
        await asyncio.gather(*(engine.consume("acct", "unit") for _ in range(20)))
        await engine.get_account("acct")  # a plain command too, on a connection of redis-py's pool
        host, port = pipe_of(engine).transport.get_extra_info("sockname")[:2]
        pipe_addr = f"{host}:{port}"
        before = await engine_clients()
        assert pipe_addr in before and len(before) >= 2
        # The runner closes its own connection; the client's pool is left alone.
        await engine.runner.aclose()
        await until_gone(pipe_addr)
        assert before - {pipe_addr} <= await engine_clients()
        # The engine closes the rest.
        await engine.aclose()
        await until_gone()
    finally:
        await observer.aclose()


async def test_aclose_fails_the_waiting_calls_at_once(
    server: RedisProcess, fast_engine: FastEngine
) -> None:
    engine = await fast_engine(socket_timeout=5)
    await engine.consume("acct", "unit")
    with frozen(server):
        calls = [asyncio.create_task(engine.consume("acct", "unit")) for _ in range(3)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await engine.aclose()
        errors, _ = await failures(calls)
        assert time.monotonic() - started < 1.0
        assert all("closed" in str(e) for e in errors), errors


async def test_aclose_while_connecting_fails_the_calls_waiting_for_the_connection(
    server: RedisProcess,
) -> None:
    redis = Redis.from_url(server.url, decode_responses=True, socket_timeout=5)
    engine = CreditEngine(redis, parse_config(PLAIN), prefix=PREFIX)
    try:
        await engine.initialize()  # no script call yet: the runner has no connection
        await redis.connection_pool.disconnect()  # nor has the pool one to give it
        with frozen(server):  # and it cannot get one: the server answers no handshake
            calls = [asyncio.create_task(engine.upsert_account("acct")) for _ in range(3)]
            deadline = time.monotonic() + 2
            assert isinstance(engine.runner, ScriptRunner), "a standalone engine"
            while engine.runner._connecting is None:
                assert time.monotonic() < deadline, "the runner did not start connecting"
                await asyncio.sleep(0.01)
            await engine.aclose()
            await failures(calls, within=2)
    finally:
        await engine.aclose()


async def test_aclose_with_calls_queued_behind_a_batch_opens_no_new_connection(
    server: RedisProcess, fast_engine: FastEngine
) -> None:
    observer = Redis.from_url(server.url, decode_responses=True)
    try:
        mine = str(await observer.client_id())
        engine = await fast_engine(socket_timeout=5)
        await observer.client_pause(300, all=False)  # scripts wait; handshakes do not
        in_flight = asyncio.create_task(engine.consume("acct", "unit"))  # held by the pause
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(engine.consume("acct", "unit"))  # waits for that batch
        await asyncio.sleep(0.01)
        await engine.aclose()
        deadline = time.monotonic() + 1
        while left := [c for c in await observer.client_list() if c["id"] != mine]:
            assert time.monotonic() < deadline, f"open after aclose: {left}"
            await asyncio.sleep(0.01)
        await failures([in_flight, queued], within=2)
    finally:
        await observer.aclose()


async def test_a_burst_after_function_flush_loads_the_library_once(
    server: RedisProcess, fast_engine: FastEngine
) -> None:
    engine = await fast_engine()
    admin = engine.redis
    await engine.credit("acct", 900)
    loaded: list[str] = []
    load = engine.runner.load

    async def counted(scripts: Any) -> None:
        loaded.extend(s.name for s in scripts)
        await load(scripts)

    engine.runner.load = counted  # type: ignore[method-assign]  # counts, then loads as before
    for _ in range(3):
        await admin.function_flush()
        await admin.config_resetstat()
        loaded.clear()
        results = await asyncio.gather(
            *(engine.consume("acct", "unit") for _ in range(150)),
            *(engine.credit("acct", 1) for _ in range(150)),
        )
        assert len(results) == 300
        assert len(loaded) == 1  # two scripts missing at once: their one library, loaded once
        stats = await admin.info("commandstats")
        assert stats["cmdstat_function|load"]["calls"] == 1
    assert (await engine.get_account("acct")).balance == 1000
