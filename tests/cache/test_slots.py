"""``ConnectionSlots``: a wait for a place on a fixed pool is this process's, never the
server's time, and is bounded on its own; a free place costs no wait."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.cache.budget import QueueTimeout, server_deadline
from limpet.cache.slots import ConnectionSlots


async def test_a_wait_for_a_place_is_no_part_of_the_budget() -> None:
    slots = ConnectionSlots(1)
    await slots.take()  # a burst holds every place

    async def free_later() -> None:
        await asyncio.sleep(0.1)  # ten budgets
        slots.give_back()

    freeing = asyncio.ensure_future(free_later())
    async with server_deadline(0.01), slots:
        await asyncio.sleep(0)  # the server answers at once
    await freeing
    assert slots.held == 0
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_place_that_never_comes_free_ends_the_wait_with_queue_timeout() -> None:
    slots = ConnectionSlots(1)
    await slots.take()
    with pytest.raises(QueueTimeout):
        async with server_deadline(0.005), slots:
            pass
    assert slots.held == 1  # the holder's place alone: the wait took none


async def test_a_free_place_is_taken_without_yielding_and_counted() -> None:
    slots = ConnectionSlots(2)
    taking = slots.take()
    with pytest.raises(StopIteration):
        taking.send(None)  # done in one step: never suspended
    assert slots.held == 1
    slots.give_back()
    assert slots.held == 0


def test_there_is_always_a_place() -> None:
    assert ConnectionSlots(0).count == ConnectionSlots(-3).count == 1


def test_take_now_takes_a_free_place_and_never_jumps_the_queue() -> None:
    async def scenario() -> None:
        slots = ConnectionSlots(1)
        assert slots.take_now() and slots.held == 1
        assert not slots.take_now() and slots.held == 1
        waiting = asyncio.ensure_future(slots.take())
        await asyncio.sleep(0)  # it queues
        slots.give_back()  # handed to the waiter, not freed
        assert not slots.take_now()
        await waiting
        assert slots.held == 1
        slots.give_back()
        assert slots.held == 0 and slots.take_now()

    asyncio.run(scenario())


# Each event: a new caller asks for a place, the oldest holder gives one back, the
# oldest caller still waiting is cancelled, or a loop turn passes (the rest happen in
# one turn until then).
SLOT_EVENTS = ("ask", "give back", "cancel a waiter", "turn")


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3), st.lists(st.sampled_from(SLOT_EVENTS), max_size=30))
def test_places_go_in_order_are_never_over_held_and_none_is_lost(
    count: int, events: list[str]
) -> None:
    asyncio.run(_slot_run(count, events))


async def _slot_run(count: int, events: list[str]) -> None:
    slots = ConnectionSlots(count)
    queued: list[int] = []  # callers that found no free place, in the order they asked
    granted: list[int] = []  # those of them, in the order they got one
    asked: list[tuple[int, asyncio.Task[None]]] = []
    holders: list[int] = []

    async def caller(n: int) -> None:
        if not slots.take_now():
            queued.append(n)
            await slots.take()
            granted.append(n)
        holders.append(n)

    for event in events:
        if event == "ask":
            n = len(asked)
            asked.append((n, asyncio.ensure_future(caller(n))))
        elif event == "give back" and holders:
            holders.pop(0)
            slots.give_back()
        elif event == "cancel a waiter":
            waiting = [task for n, task in asked if n in queued and not task.done()]
            if waiting:
                waiting[0].cancel()  # perhaps handed a place in this very turn
        elif event == "turn":
            await asyncio.sleep(0)
        assert 0 <= slots.held <= count
        assert len(holders) <= slots.held
        still = [queued.index(n) for n, task in asked if n in queued and not task.done()]
        assert all(queued.index(n) < min(still) for n in granted if still)  # none overtaken
    for _, task in asked:
        if not task.done():
            task.cancel()
    await asyncio.gather(*(task for _, task in asked), return_exceptions=True)
    assert granted == [n for n in queued if n in granted]  # first come, first served
    for _ in holders:
        slots.give_back()
    assert slots.held == 0  # every place back: none lost to a cancelled waiter
    assert slots.take_now()
