"""One Redis connection that the batched script calls write into and read from directly.

redis-py reads a pipeline's replies one at a time, each through its connection, parser and
stream-reader layers: about 2.5 us a reply, a third of a charge's client-side cost. Here the
connection's transport is handed to a small protocol: the bytes that arrive go into one hiredis
reader, and each reply resolves the future of the call it answers, in order. The connection is
made by redis-py (address, TLS, AUTH, SELECT: whatever the URL says) and then kept for this
use alone.

Error replies are handed on as they are (``hiredis.ReplyError``): the caller tells a script's
failure from a Redis that cannot serve for now (LOADING, READONLY...: quotagate.engine.replies).
A connection that fails, closes or leaves a reply unanswered past ``timeout`` seconds is
dropped: every call still waiting on it fails with BackendUnavailable (a charge whose reply was
lost may or may not have run, exactly as with any client), and the next call connects anew.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, Protocol

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from quotagate.engine.replies import unavailable
from quotagate.errors import BackendUnavailable, NoRedisTransport


class Pipe(Protocol):
    closed: bool

    def send(self, payload: bytes, futures: list[asyncio.Future[Any]]) -> None: ...

    async def aclose(self) -> None: ...


_TRANSPORT_METHODS = ("get_protocol", "set_protocol", "resume_reading", "write", "abort")


async def open_pipe(redis: Redis, timeout: float) -> Pipe:  # noqa: ASYNC109 - a reply bound
    """A :class:`ReplyPipe`, or a :class:`PooledPipe` for a client without sockets."""
    try:
        return await ReplyPipe.open(redis, timeout)
    except NoRedisTransport:
        return PooledPipe(redis, timeout)


class ReplyPipe(asyncio.Protocol):
    """A connection taken over from redis-py's pool; replies resolve futures in order."""

    def __init__(self, redis: Redis, conn: Any, timeout: float) -> None:
        self.redis = redis
        self.conn = conn
        self.timeout = timeout
        self.transport: asyncio.Transport = conn._writer.transport
        self.reader = hiredis.Reader(encoding="utf-8")
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._deadlines: deque[tuple[float, int]] = deque()
        """(time by which a reply must have come, count of replies expected by then)."""
        self._answered = 0
        self._sent = 0
        self._timer: asyncio.TimerHandle | None = None
        self._given_back: asyncio.Task[None] | None = None
        # redis-py still owns the socket's life (its pool may close it): its stream protocol
        # hears of the close from us, or its wait for the close would never end.
        self._stream_protocol = self.transport.get_protocol()
        self.transport.set_protocol(self)
        self.transport.resume_reading()

    @classmethod
    async def open(cls, redis: Redis, timeout: float) -> ReplyPipe:  # noqa: ASYNC109
        pool: Any = redis.connection_pool  # redis-py leaves get_connection untyped
        conn = await pool.get_connection()
        try:
            await conn.connect()
            transport = getattr(getattr(conn, "_writer", None), "transport", None)
            # uvloop's transports do not derive from asyncio.Transport: ask for what is used.
            if not all(callable(getattr(transport, m, None)) for m in _TRANSPORT_METHODS):
                raise NoRedisTransport(type(conn).__name__)
        except BaseException:
            await pool.release(conn)
            raise
        return cls(redis, conn, timeout)

    def send(self, payload: bytes, futures: list[asyncio.Future[Any]]) -> None:
        """Write ``payload`` (one command per future) and expect one reply per future."""
        if self.closed:
            error = BackendUnavailable("Redis connection closed")
            for fut in futures:
                if not fut.done():
                    fut.set_exception(error)
            return
        self.waiting.extend(futures)
        self._sent += len(futures)
        self._deadlines.append((self._loop.time() + self.timeout, self._sent))
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadlines[0][0], self._check)
        self.transport.write(payload)

    # -- asyncio.Protocol -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        answered = 0
        try:
            while (reply := reader.gets()) is not False:
                answered += 1
                fut = waiting.popleft()
                if not fut.done():  # a caller that gave up (timeout) still consumes its reply
                    fut.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            self.abort(f"Redis sent what no call waited for: {exc!r}")
            return
        self._answered += answered
        deadlines = self._deadlines
        while deadlines and deadlines[0][1] <= self._answered:
            deadlines.popleft()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(BackendUnavailable(f"Redis connection lost: {exc or 'closed'}"))
        self._stream_protocol.connection_lost(exc)

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost fails the waiting calls

    # -- closing ----------------------------------------------------------------------------

    def _check(self) -> None:
        self._timer = None
        if self.closed or not self._deadlines:
            return
        due, _ = self._deadlines[0]
        if self._loop.time() >= due:
            self.abort(f"Redis did not answer within {self.timeout:g} s")
        else:
            self._timer = self._loop.call_at(due, self._check)

    def abort(self, reason: str) -> None:
        self._fail(BackendUnavailable(reason))
        self.transport.abort()

    def _fail(self, error: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self.waiting = self.waiting, deque()
        for fut in waiting:
            if not fut.done():
                fut.set_exception(error)
        self._given_back = self._loop.create_task(self._give_back())

    async def _give_back(self) -> None:
        """The redis-py connection object back to its pool, disconnected."""
        with contextlib.suppress(Exception):
            await self.conn.disconnect(nowait=True)
        with contextlib.suppress(Exception):
            await self.redis.connection_pool.release(self.conn)

    async def aclose(self) -> None:
        if not self.closed:
            self._fail(BackendUnavailable("Redis connection closed"))
            self.transport.close()
        if self._given_back is not None:
            await self._given_back


class PooledPipe:
    """The same contract through redis-py's own connections, one per batch: for clients whose
    connections have no socket to take over (fakeredis, in unit tests)."""

    closed = False

    def __init__(self, redis: Redis, timeout: float) -> None:
        self.redis = redis
        self.timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, payload: bytes, futures: list[asyncio.Future[Any]]) -> None:
        task = asyncio.ensure_future(self._round_trip(payload, futures))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _round_trip(self, payload: bytes, futures: list[asyncio.Future[Any]]) -> None:
        pool: Any = self.redis.connection_pool
        try:
            conn = await pool.get_connection()
        except Exception as exc:
            _fail_all(futures, BackendUnavailable(f"Redis did not answer: {exc}"))
            return
        try:
            await conn.send_packed_command(payload, check_health=False)
            async with asyncio.timeout(self.timeout):
                for fut in futures:
                    try:
                        reply = await conn.read_response()
                    except redis_errors.ResponseError as exc:
                        reply = hiredis.ReplyError(_reply_text(exc))
                    if not fut.done():
                        fut.set_result(reply)
        except Exception as exc:
            await conn.disconnect(nowait=True)
            error = unavailable(exc) or BackendUnavailable(f"Redis did not answer: {exc}")
            _fail_all(futures, error)
        finally:
            await pool.release(conn)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            await task


def _reply_text(exc: redis_errors.ResponseError) -> str:
    """The error reply as Redis sent it: redis-py keeps the first word of the ones it knows
    (NOSCRIPT, READONLY...) apart, in ``status_code``."""
    code = exc.status_code
    return f"{code} {exc}" if code else str(exc)


def _fail_all(futures: list[asyncio.Future[Any]], error: BaseException) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_exception(error)
