"""``server_deadline``: one timer counts the server's budget; it ends the block with
``TimeoutError``, and leaves every other cancellation as it was."""

from __future__ import annotations

import asyncio

import pytest

from limpet.cache.redis.reads import server_deadline


async def test_a_spent_budget_ends_the_block_with_timeout_error() -> None:
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        async with server_deadline(0.02):
            await asyncio.Event().wait()
    assert asyncio.get_running_loop().time() - started >= 0.02
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_block_that_ends_in_time_leaves_no_timer_behind() -> None:
    async with server_deadline(0.05):
        await asyncio.sleep(0)
    await asyncio.sleep(0.08)  # a timer left armed would cancel this task now


async def test_the_callers_own_cancellation_stays_a_cancellation() -> None:
    async def guarded() -> None:
        async with server_deadline(10.0):
            await asyncio.Event().wait()

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
