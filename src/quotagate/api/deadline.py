"""A bound on how long a request may wait, for many requests that share one bound.

``asyncio.timeout`` arms and cancels a loop timer per use, and is an async context manager,
which on the hook costs a noticeable part of a request (docs/benchmark.md). Here a use is
a plain ``with`` that appends to a queue, and one timer, armed for the oldest use still waiting,
cancels whatever is past its deadline. All uses share one length, so they expire in the order
they began and the queue stays sorted without a heap. On expiry the block raises
TimeoutError, as with ``asyncio.timeout`` (whose cancel/uncancel protocol this follows).
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType
from typing import Any


class Deadline:
    """``with deadline.bound():`` inside a task raises TimeoutError past ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._waiting: deque[Bound | Watch] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bound(self) -> Bound:
        return Bound(self)

    def watch(self, fut: asyncio.Future[Any]) -> None:
        """Cancel ``fut`` if it is not done within the deadline (for callers that answer from
        its done-callback rather than await it in a task)."""
        loop = fut.get_loop()
        self._add(Watch(fut, loop.time() + self.seconds), loop)

    def _add(self, use: Bound | Watch, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:  # a new event loop (tests): the old one's state is moot
            self._waiting.clear()
            self._timer, self._loop = None, loop
        self._waiting.append(use)
        if self._timer is None:
            self._timer = loop.call_at(use.deadline, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        waiting, loop = self._waiting, self._loop
        assert loop is not None
        now = loop.time()
        while waiting and (waiting[0].done or waiting[0].deadline <= now):
            use = waiting.popleft()
            if not use.done:
                use.expire()
        if waiting:
            self._timer = loop.call_at(waiting[0].deadline, self._sweep)


class Watch:
    """A future under a :class:`Deadline`: cancelled when it expires."""

    __slots__ = ("deadline", "fut")

    def __init__(self, fut: asyncio.Future[Any], deadline: float) -> None:
        self.fut = fut
        self.deadline = deadline

    @property
    def done(self) -> bool:
        return self.fut.done()

    def expire(self) -> None:
        self.fut.cancel()


class Bound:
    """One use of a :class:`Deadline` by a task."""

    __slots__ = ("_owner", "cancelling", "deadline", "done", "expired", "task")

    def __init__(self, owner: Deadline) -> None:
        self._owner = owner
        self.task: asyncio.Task[object] | None = None
        self.cancelling = 0
        self.deadline = 0.0
        self.done = False
        self.expired = False

    def __enter__(self) -> None:
        loop = self._owner._loop
        # current_task(loop) is a dict look-up; with no loop given it asks for the running
        # loop, which costs a getpid() syscall on CPython 3.11. The loop of the last use is
        # almost always the running one; when it is not (first use, tests), ask.
        task = asyncio.current_task(loop) if loop is not None else None
        if task is None:
            loop = asyncio.get_running_loop()
            task = asyncio.current_task(loop)
        assert task is not None and loop is not None, "a deadline bounds a task"
        self.task, self.cancelling = task, task.cancelling()
        self.deadline = loop.time() + self._owner.seconds
        self._owner._add(self, loop)

    def expire(self) -> None:
        if self.task is not None:
            self.expired = True
            self.task.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.done = True
        if not self.expired or self.task is None:
            return
        if self.task.uncancel() <= self.cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
