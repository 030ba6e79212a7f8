"""The shared deadline bounds each use like asyncio.timeout, and costs no timer per use."""

from __future__ import annotations

import asyncio
import time

import pytest

from quotagate.api.deadline import Deadline


async def _wait(deadline: Deadline, seconds: float) -> str:
    with deadline.bound():
        await asyncio.sleep(seconds)
    return "done"


async def test_uses_past_the_bound_raise_timeout_and_the_others_finish() -> None:
    deadline = Deadline(0.05)
    started = time.monotonic()
    results = await asyncio.gather(
        *(_wait(deadline, 1 if i % 2 else 0.005) for i in range(20)), return_exceptions=True
    )
    elapsed = time.monotonic() - started
    assert results[0::2] == ["done"] * 10
    assert all(isinstance(r, TimeoutError) for r in results[1::2])
    assert 0.05 <= elapsed < 0.5


async def test_later_uses_get_their_own_full_bound() -> None:
    deadline = Deadline(0.1)
    first = asyncio.create_task(_wait(deadline, 1))
    await asyncio.sleep(0.06)
    second = asyncio.create_task(_wait(deadline, 0.07))  # ends at 0.13 s, inside its own bound
    assert await second == "done"
    with pytest.raises(TimeoutError):
        await first


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    deadline = Deadline(5)
    task = asyncio.create_task(_wait(deadline, 1))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_one_deadline_serves_successive_event_loops() -> None:
    deadline = Deadline(0.05)
    assert asyncio.run(_wait(deadline, 0.001)) == "done"

    async def leave_one_waiting() -> None:
        asyncio.get_running_loop().create_task(_wait(deadline, 10))

    asyncio.run(leave_one_waiting())  # its timer dies with that loop
    with pytest.raises(TimeoutError):
        asyncio.run(_wait(deadline, 1))
