"""``server_deadline`` and ``Watchdog``: one timer counts the server's budget of every
call in flight; it ends a block with ``TimeoutError``, and leaves every other
cancellation as it was."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import Counter
from typing import Any

import pytest

from limpet.cache import budget, loop_idle
from limpet.cache.budget import QueueTimeout, Watchdog, connection_held, queueing, server_deadline


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


async def test_a_wait_in_this_process_is_not_the_servers_time() -> None:
    """Ten budgets spent waiting for a connection of this process's own: the budget
    starts once the connection is held."""
    async with server_deadline(0.01):
        with queueing():
            await asyncio.sleep(0.1)
        await asyncio.sleep(0)  # the server answers at once
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_the_budget_counts_from_the_connection_held() -> None:
    with pytest.raises(TimeoutError) as info:
        async with server_deadline(0.005):
            with queueing():
                connection_held()
                await asyncio.Event().wait()  # connecting, or a server that never answers
    assert not isinstance(info.value, QueueTimeout)


async def test_a_wait_in_this_process_is_bounded_and_says_so() -> None:
    started = asyncio.get_running_loop().time()
    with pytest.raises(QueueTimeout):
        async with server_deadline(0.005):
            with queueing():
                await asyncio.Event().wait()  # no connection ever comes free
    assert asyncio.get_running_loop().time() - started >= 0.005 * 20
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_queueing_outside_a_budget_does_nothing() -> None:
    with queueing():
        await asyncio.sleep(0)
    connection_held()


async def test_a_budget_within_another_of_one_watchdog_leaves_the_outer_one_counted() -> None:
    watchdog = Watchdog(0.01)
    with pytest.raises(TimeoutError):
        async with watchdog.bound(0.01):
            async with watchdog.bound(10.0):
                await asyncio.sleep(0)
            await asyncio.Event().wait()  # the outer budget still ends this


async def test_a_wait_in_this_process_pauses_every_budget_of_its_task() -> None:
    outer, inner = Watchdog(0.01), Watchdog(0.01)
    async with outer.bound(0.01), inner.bound(0.01):
        with queueing():
            await asyncio.sleep(0.1)
        await asyncio.sleep(0)  # the server answers at once
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def busy_in_short_ticks(seconds: float) -> None:
    """Other callers' CPU work for ``seconds``, in ticks of a millisecond."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        tick = time.perf_counter() + 0.001
        while time.perf_counter() < tick:
            pass  # a caller's CPU work
        await asyncio.sleep(0)


async def test_a_loop_busy_with_other_callers_in_short_ticks_is_not_the_servers_time() -> None:
    """Two budgets of other callers' work in ticks of a millisecond, every check on time,
    before the "server" answers: the loop was never idle, so only the least share of it
    counts, half the budget (counted in wall time, a burst of misses took a healthy Redis
    Cluster for slow)."""
    answered = asyncio.Event()

    async def other_callers(seconds: float) -> None:
        await busy_in_short_ticks(seconds)
        answered.set()

    busy = asyncio.create_task(other_callers(0.08))
    async with server_deadline(0.04):
        await answered.wait()
    await busy
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_server_that_never_answers_is_found_however_busy_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loop that is never idle still counts a quarter of each step: a server that
    stopped answering ends the call (and the breaker opens), rather than being taken for
    healthy for as long as other callers keep the loop busy."""
    monkeypatch.setattr(budget, "thread_busy", asyncio.get_running_loop().time)  # never idle

    async def silent_server() -> None:
        async with server_deadline(0.02):
            await asyncio.Event().wait()

    call = asyncio.create_task(silent_server())
    await asyncio.wait({call}, timeout=30)  # a failure, not a hang
    assert call.done() and isinstance(call.exception(), TimeoutError)


@pytest.mark.skipif(not os.path.exists("/proc/thread-self"), reason="Linux's schedstat")
def test_a_forked_child_measures_its_own_thread() -> None:
    loop_idle.thread_busy()  # the parent's thread opens its schedstat
    pid = os.fork()
    if pid == 0:  # the child: its own thread's file, not the parent's
        loop_idle.thread_busy()
        fd = loop_idle._thread.schedstat._fd
        os._exit(0 if os.readlink(f"/proc/self/fd/{fd}").startswith(f"/proc/{os.getpid()}/") else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


async def test_once_the_server_has_failed_each_step_counts_whole_however_busy_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server whose breaker has a failure streak gets no benefit of the doubt from a busy
    loop: a silent one is found in a quarter of the checks (an outage is found as fast as
    in an idle loop, and a caller's short timeout is not spent on it)."""
    monkeypatch.setattr(budget, "thread_busy", asyncio.get_running_loop().time)  # never idle
    checks: Counter[bool] = Counter()
    count = budget.Bounded.count

    def counted(self: budget.Bounded, now: float, on_time: bool, idle: float) -> float | None:
        checks[idle == 1.0] += 1
        return count(self, now, on_time, idle)

    monkeypatch.setattr(budget.Bounded, "count", counted)

    async def silent_server(watchdog: Watchdog) -> None:
        async with watchdog.bound(0.02):
            await asyncio.Event().wait()

    for streak in (True, False):  # the breaker's, as the watchdog asks for it
        failing = functools.partial(bool, streak)
        call = asyncio.create_task(silent_server(Watchdog(0.02, failing=failing)))
        await asyncio.wait({call}, timeout=30)  # a failure, not a hang
        assert call.done() and isinstance(call.exception(), TimeoutError)
    assert 0 < checks[True] < checks[False]
