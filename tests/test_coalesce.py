"""SingleFlight: one call per key; cancellation and errors handled per waiter."""

from __future__ import annotations

import asyncio
import functools
import gc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.flight.local import SingleFlight


class Upstream:
    """A call that blocks until released, counting how often it started."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = 0

    async def __call__(self, value: str = "answer") -> str:
        self.calls += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return value


async def test_concurrent_callers_of_one_key_share_one_call() -> None:
    flight: SingleFlight[str] = SingleFlight()
    upstream = Upstream()
    tasks = [asyncio.create_task(flight.do("k", upstream)) for _ in range(1000)]
    await upstream.started.wait()
    upstream.release.set()
    results = await asyncio.gather(*tasks)
    assert upstream.calls == 1
    assert [r for r, _ in results] == ["answer"] * 1000
    assert sum(led for _, led in results) == 1
    assert len(flight) == 0


async def test_different_keys_fly_separately() -> None:
    flight: SingleFlight[str] = SingleFlight()
    upstream = Upstream()
    upstream.release.set()
    results = await asyncio.gather(
        *(flight.do(f"k{i % 50}", functools.partial(upstream, f"v{i % 50}")) for i in range(1000))
    )
    assert upstream.calls == 50
    assert {r for r, _ in results} == {f"v{i}" for i in range(50)}


async def test_cancelling_some_waiters_leaves_the_others_their_result() -> None:
    flight: SingleFlight[str] = SingleFlight()
    upstream = Upstream()
    tasks = [asyncio.create_task(flight.do("k", upstream)) for _ in range(100)]
    await upstream.started.wait()
    for task in tasks[:10]:  # the leader among them
        task.cancel()
    await asyncio.gather(*tasks[:10], return_exceptions=True)
    upstream.release.set()
    results = await asyncio.gather(*tasks[10:])
    assert [r for r, _ in results] == ["answer"] * 90
    assert upstream.calls == 1
    assert upstream.cancelled == 0


async def test_when_every_waiter_is_gone_the_call_is_cancelled_and_forgotten() -> None:
    flight: SingleFlight[str] = SingleFlight()
    upstream = Upstream()
    tasks = [asyncio.create_task(flight.do("k", upstream)) for _ in range(3)]
    await upstream.started.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert len(flight) == 0
    fresh = asyncio.create_task(flight.do("k", upstream))
    upstream.release.set()
    assert await fresh == ("answer", True)
    assert upstream.cancelled == 1
    assert upstream.calls == 2


async def test_orphans_may_finish_when_configured() -> None:
    flight: SingleFlight[str] = SingleFlight(cancel_orphans=False)
    upstream = Upstream()
    done = asyncio.Event()

    async def fill_cache() -> str:
        value = await upstream()
        done.set()
        return value

    task = asyncio.create_task(flight.do("k", fill_cache))
    await upstream.started.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    upstream.release.set()
    await done.wait()
    assert upstream.cancelled == 0


async def test_an_error_reaches_every_waiter_and_is_not_remembered() -> None:
    flight: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()
    started = asyncio.Event()
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        raise RuntimeError("upstream said no")

    tasks = [asyncio.create_task(flight.do("k", failing)) for _ in range(20)]
    # The call's task is scheduled after all 20 callers have run once, so all have joined.
    await started.wait()
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, RuntimeError) for r in results)

    async def fine() -> str:
        return "ok"

    assert await flight.do("k", fine) == ("ok", True)


async def test_an_orphaned_failure_is_not_reported_as_unretrieved() -> None:
    loop = asyncio.get_running_loop()
    reports: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    flight: SingleFlight[str] = SingleFlight(cancel_orphans=False)
    calls: list[asyncio.Future[str]] = [loop.create_future()]
    joined = asyncio.Event()

    def start() -> asyncio.Future[str]:
        joined.set()
        return calls[0]

    task = asyncio.create_task(flight.do("k", start))
    await joined.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    calls[0].set_exception(RuntimeError("nobody is listening"))
    # Done-callbacks run in the order they were added, so the flight's has run by now.
    await asyncio.wait(calls)
    assert len(flight) == 0
    calls.clear()  # an unretrieved exception is reported when its future is collected
    gc.collect()
    loop.set_exception_handler(None)
    assert reports == []


class Flaky(Exception):
    pass


async def test_a_retryable_failure_promotes_one_waiter_once() -> None:
    flight: SingleFlight[str] = SingleFlight(retry_if=lambda exc: isinstance(exc, Flaky))
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def flaky_then_fine() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        if calls == 1:
            raise Flaky("upstream hiccup")
        return "second try"

    tasks = [asyncio.create_task(flight.do("k", flaky_then_fine)) for _ in range(10)]
    await started.wait()
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == 2
    assert isinstance(results[0], Flaky)  # the first call's leader gets its own error
    followers = [r for r in results[1:] if not isinstance(r, BaseException)]
    assert [value for value, _ in followers] == ["second try"] * 9
    assert sum(led for _, led in followers) == 1


async def test_promotion_is_bounded_and_final_errors_are_not_retried() -> None:
    flight: SingleFlight[str] = SingleFlight(retry_if=lambda exc: isinstance(exc, Flaky))
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def always(error: Exception) -> str:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        raise error

    for error, expected_calls in ((Flaky("again"), 2), (ValueError("final"), 1)):
        calls = 0
        started.clear()
        release.clear()
        tasks = [
            asyncio.create_task(flight.do("k", functools.partial(always, error))) for _ in range(10)
        ]
        await started.wait()
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert calls == expected_calls
        assert all(isinstance(r, type(error)) for r in results)


class Unsent(Flaky):
    """A failure that never reached upstream (the leader's own deadline while queued)."""


async def test_failures_that_free_if_accepts_use_up_no_promotion() -> None:
    flight: SingleFlight[str] = SingleFlight(
        retry_if=lambda exc: isinstance(exc, Flaky),
        free_if=lambda exc: isinstance(exc, Unsent),
    )
    release = asyncio.Event()
    calls = 0

    async def unsent_three_times() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        if calls <= 3:
            raise Unsent("queued past its leader's deadline")
        return "sent at last"

    tasks = [asyncio.create_task(flight.do("k", unsent_three_times)) for _ in range(5)]
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == 4  # three leaders' own failures, then the fourth caller's call
    assert all(isinstance(r, Unsent) for r in results[:3])
    assert results[3:] == [("sent at last", True), ("sent at last", False)]


async def test_the_result_is_the_leaders_claim_while_it_waits() -> None:
    flight: SingleFlight[str] = SingleFlight()
    upstream = Upstream()
    tasks = [asyncio.create_task(flight.do("k", upstream)) for _ in range(5)]
    await upstream.started.wait()
    upstream.release.set()
    results = await asyncio.gather(*tasks)
    assert [claimed for _, claimed in results] == [True, False, False, False, False]


async def test_a_leader_that_left_passes_its_claim_to_the_first_caller_still_waiting() -> None:
    # Paid for all the same: the answer is one caller's own, never nobody's.
    flight: SingleFlight[str] = SingleFlight()
    upstream = Upstream()
    tasks = [asyncio.create_task(flight.do("k", upstream)) for _ in range(4)]
    await upstream.started.wait()
    tasks[0].cancel()  # the leader
    tasks[1].cancel()  # and the first to wait after it
    upstream.release.set()
    results = await asyncio.gather(*tasks[2:])
    assert [claimed for _, claimed in results] == [True, False]
    assert tasks[0].cancelled() and tasks[1].cancelled()


async def test_a_claim_given_to_a_caller_cancelled_before_it_resumed_passes_on() -> None:
    # The result lands on every waiter in one turn; the leader's task is cancelled before
    # it resumes (a timeout of its own at that very moment): the next caller claims it.
    flight: SingleFlight[str] = SingleFlight()
    upstream = Upstream()
    tasks = [asyncio.create_task(flight.do("k", upstream)) for _ in range(3)]
    await upstream.started.wait()
    # Runs right after the flight lands its result (its done callback came first).
    flight._flights["k"].task.add_done_callback(lambda _: tasks[0].cancel())
    upstream.release.set()
    results = await asyncio.gather(*tasks[1:])
    assert tasks[0].cancelled()
    assert [claimed for _, claimed in results] == [True, False]


async def test_a_caller_joining_a_flight_its_leader_left_claims_it() -> None:
    flight: SingleFlight[str] = SingleFlight()
    upstream = Upstream()
    leader = asyncio.create_task(flight.do("k", upstream))
    await upstream.started.wait()
    joined = flight.join("k")
    assert joined is not None
    joining = asyncio.ensure_future(joined)  # its place among the waiters is taken now
    leader.cancel()
    upstream.release.set()
    assert await joining == ("answer", True)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.data())
def test_exactly_the_first_caller_given_the_result_claims_it(callers: int, data: Any) -> None:
    # Any callers cancelled before the result lands, and any cancelled in the very turn
    # it lands (before they resume): of those that return it, exactly the first claims it.
    before = data.draw(st.sets(st.integers(0, callers - 1)), label="cancelled before")
    landing = data.draw(st.sets(st.integers(0, callers - 1)), label="cancelled as it lands")

    async def run() -> None:
        flight: SingleFlight[str] = SingleFlight(cancel_orphans=False)
        upstream = Upstream()
        tasks = [asyncio.create_task(flight.do("k", upstream)) for _ in range(callers)]
        await upstream.started.wait()
        for index in before:
            tasks[index].cancel()
        running = flight._flights["k"].task

        def cancel_landing(_: object) -> None:
            for index in landing:
                tasks[index].cancel()

        running.add_done_callback(cancel_landing)  # after the flight's own: as it lands
        upstream.release.set()
        await asyncio.wait(tasks)
        returned = [t.result() for t in tasks if not t.cancelled()]
        claims = [claimed for _, claimed in returned]
        assert claims == ([True] + [False] * (len(claims) - 1) if claims else [])

    asyncio.run(run())
