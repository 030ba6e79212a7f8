"""or_else_on: a future's outcome, or on one signal another's, with cancellation passed on."""

from __future__ import annotations

import asyncio

import pytest

from quotagate.engine.futures import or_else_on


class Signal(Exception):
    pass


async def test_the_first_outcome_unless_it_is_the_signal() -> None:
    loop = asyncio.get_running_loop()
    started: list[str] = []

    def then() -> asyncio.Future[str]:
        started.append("then")
        second: asyncio.Future[str] = loop.create_future()
        loop.call_soon(second.set_result, "second")
        return second

    plain: asyncio.Future[str] = loop.create_future()
    chained = or_else_on(Signal, plain, then)
    plain.set_result("first")
    assert await chained == "first" and started == []

    failing: asyncio.Future[str] = loop.create_future()
    chained = or_else_on(Signal, failing, then)
    failing.set_exception(ValueError("no"))
    with pytest.raises(ValueError):
        await chained
    assert started == []

    signalled: asyncio.Future[str] = loop.create_future()
    chained = or_else_on(Signal, signalled, then)
    signalled.set_exception(Signal())
    assert await chained == "second" and started == ["then"]


async def test_cancelling_the_result_cancels_what_runs() -> None:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[str] = loop.create_future()
    seconds: list[asyncio.Future[str]] = []

    def then() -> asyncio.Future[str]:
        seconds.append(loop.create_future())
        return seconds[-1]

    chained = or_else_on(Signal, first, then)
    chained.cancel()
    await asyncio.sleep(0)
    assert first.cancelled()

    first = loop.create_future()
    chained = or_else_on(Signal, first, then)
    first.set_exception(Signal())
    await asyncio.sleep(0)
    chained.cancel()
    await asyncio.sleep(0)
    assert seconds[-1].cancelled()


async def test_a_then_that_raises_is_the_outcome() -> None:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[str] = loop.create_future()

    def then() -> asyncio.Future[str]:
        raise ValueError("bad input found late")

    chained = or_else_on(Signal, first, then)
    first.set_exception(Signal())
    with pytest.raises(ValueError, match="late"):
        await chained
