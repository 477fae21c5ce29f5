"""``server_deadline`` and ``Watchdog``: one timer counts the server's budget of every
call in flight; it ends a block with ``TimeoutError``, and leaves every other
cancellation as it was."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from limpet.cache.budget import Watchdog, server_deadline


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


async def test_one_watchdog_times_each_call_by_its_own_budget() -> None:
    watchdog = Watchdog(0.02)

    async def bounded(budget: float, wait: asyncio.Event) -> str:
        try:
            async with watchdog.bound(budget):
                await wait.wait()
        except TimeoutError:
            return "timed out"
        return "answered"

    never, soon = asyncio.Event(), asyncio.Event()
    slow = asyncio.create_task(bounded(0.02, never))
    fast = asyncio.create_task(bounded(0.02, soon))
    patient = asyncio.create_task(bounded(10.0, soon))
    await asyncio.sleep(0)
    soon.set()
    assert await fast == "answered" and await patient == "answered"
    assert await slow == "timed out"
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_watchdog_keeps_one_timer_however_many_calls_are_in_flight() -> None:
    loop = asyncio.get_running_loop()
    watchdog = Watchdog(0.05)
    armed = []
    call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, callback, *args)

    loop.call_at = counting_call_at  # type: ignore[assignment]
    try:
        for _ in range(100):  # sequential calls, as hits are
            async with watchdog.bound(0.05):
                await asyncio.sleep(0)
    finally:
        loop.call_at = call_at  # type: ignore[method-assign]
    assert len(armed) == 1
