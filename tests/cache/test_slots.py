"""``ConnectionSlots``: a wait for a place on a fixed pool is this process's, never the
server's time, and is bounded on its own; a free place costs no wait."""

from __future__ import annotations

import asyncio

import pytest

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
