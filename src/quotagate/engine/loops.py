"""The running event loop, found cheaply on the hot path.

``asyncio.get_running_loop()`` makes a ``getpid()`` system call on every call on CPython 3.11
(it checks that the loop was not inherited across a fork); a charge asks for its loop several
times, so that call was a visible part of its cost. A :class:`RunningLoop` remembers the loop
of the last call and checks it with a dictionary look-up instead: if a task of that loop is
running, it is the running loop.
"""

from __future__ import annotations

import asyncio


class RunningLoop:
    """``get()`` is ``asyncio.get_running_loop()``, without its system call when the loop is
    the one seen last and the caller runs in one of its tasks."""

    __slots__ = ("_loop",)

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or asyncio.current_task(loop) is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop
