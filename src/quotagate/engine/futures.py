"""Futures chained by callbacks, for the paths that answer without a task per call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def or_else_on(
    signal: type[BaseException],
    first: asyncio.Future[T],
    then: Callable[[], asyncio.Future[T]],
) -> asyncio.Future[T]:
    """``first``'s outcome, or, when it fails with ``signal``, that of ``then()``, started
    then. Cancelling the result cancels whichever is running."""
    out: asyncio.Future[T] = first.get_loop().create_future()

    def relay(source: asyncio.Future[T]) -> None:
        if out.done():
            return
        if source.cancelled():
            out.cancel()
        elif (exc := source.exception()) is None:
            out.set_result(source.result())
        elif isinstance(exc, signal) and source is first:
            try:
                second = then()
            except BaseException as error:  # bad input found late: the caller's to see
                out.set_exception(error)
                return
            out.add_done_callback(lambda o: second.cancel() if o.cancelled() else None)
            second.add_done_callback(relay)
        else:
            out.set_exception(exc)

    out.add_done_callback(lambda o: first.cancel() if o.cancelled() else None)
    first.add_done_callback(relay)
    return out
