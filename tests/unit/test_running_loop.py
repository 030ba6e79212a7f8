"""RunningLoop: the running loop, remembered, and never a stale one."""

from __future__ import annotations

import asyncio

import pytest

from quotagate.engine.loops import RunningLoop


def test_it_is_the_running_loop_in_a_task_and_in_a_callback() -> None:
    cache = RunningLoop()
    seen: list[bool] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen.append(cache.get() is loop)
        seen.append(cache.get() is loop)  # the remembered one
        done = loop.create_future()

        def callback() -> None:
            seen.append(cache.get() is loop)
            done.set_result(None)

        loop.call_soon(callback)
        await done

    asyncio.run(main())
    assert seen == [True, True, True]


def test_a_new_loop_is_found_after_the_old_one_closed() -> None:
    cache = RunningLoop()

    async def which() -> asyncio.AbstractEventLoop:
        return cache.get()

    first = asyncio.run(which())
    second_loop = asyncio.new_event_loop()
    try:
        assert second_loop.run_until_complete(which()) is second_loop
    finally:
        second_loop.close()
    assert first is not second_loop


def test_outside_a_loop_it_refuses_like_asyncio() -> None:
    with pytest.raises(RuntimeError):
        RunningLoop().get()
