"""``WriteQueue.room`` and ``wait_for_room()``: a caller with more to store than the queue
holds waits for room while the tier is healthy, and never while it is failing. No server:
a batch is sent by a function the test holds back with an event."""

from __future__ import annotations

import asyncio

from limpet.cache.breaker import CircuitBreaker
from limpet.cache.writes import BatchOutcome, Write, WriteQueue

BOUND = 4


class HeldSender:
    """Sends a batch once the test lets it: ``go`` set."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.sent: list[str] = []

    async def __call__(self, batch: list[tuple[str, Write]], budget: float) -> BatchOutcome:
        await self.go.wait()
        self.sent.extend(key for key, _ in batch)
        return BatchOutcome()


async def no_clear() -> None:
    raise AssertionError("no clear is owed here")


def full_queue(sender: HeldSender, breaker: CircuitBreaker) -> WriteQueue:
    queue = WriteQueue(
        sender,
        breaker,
        clear=no_clear,
        timeout=0.1,
        max_pending=BOUND,
        where="test",
        kind="test",
        batch_size=2,
    )
    for i in range(BOUND):
        queue.put(f"k{i}", b"v", 60)  # nothing yields: the writer has taken none yet
    return queue


def room_of(queue: WriteQueue) -> int | None:
    return queue.room


async def test_a_full_queue_of_a_healthy_tier_makes_room_as_its_writer_takes_batches() -> None:
    sender, breaker = HeldSender(), CircuitBreaker()
    queue = full_queue(sender, breaker)
    assert queue.room == 0
    await queue.wait_for_room()  # the writer took its first batch (held in flight)
    assert queue.room == 2
    for i in range(BOUND, BOUND + 2):
        queue.put(f"k{i}", b"v", 60)
    assert queue.dropped == 0
    sender.go.set()
    await queue.flush()
    assert sorted(sender.sent) == [f"k{i}" for i in range(BOUND + 2)]


async def test_nobody_waits_for_room_on_a_failing_tier() -> None:
    sender, breaker = HeldSender(), CircuitBreaker(failure_threshold=1)
    queue = full_queue(sender, breaker)
    breaker.record_failure()
    assert queue.room is None
    await queue.wait_for_room()  # at once: the writer has not even started
    queue.put("beyond", b"v", 60)
    assert queue.dropped == 1  # a failing tier's writes beyond the bound are dropped
    sender.go.set()
    await queue.close(1.0)


async def test_closing_the_queue_lets_its_waiters_go() -> None:
    sender, breaker = HeldSender(), CircuitBreaker()
    queue = full_queue(sender, breaker)
    await queue.wait_for_room()  # the writer takes its first batch and holds it
    queue.put("k4", b"v", 60)
    queue.put("k5", b"v", 60)
    assert queue.room == 0
    waiting = asyncio.ensure_future(queue.wait_for_room())
    await queue.close(0.0)  # the held batch never lands: the queue gives up on it
    await waiting
    assert room_of(queue) is None
    assert queue.dropped == BOUND + 2


async def test_a_value_that_landed_another_way_leaves_the_queue_uncounted() -> None:
    # A flight's release stores its entry with the lease: the same write still queued
    # is a duplicate, and makes room when dropped; one queued since with another value
    # (a refresh) is kept.
    sender, breaker = HeldSender(), CircuitBreaker()
    queue = full_queue(sender, breaker)
    queue.forget("k0", b"v")
    queue.forget("k1", b"another value")
    assert queue.queued("k0") is None and queue.queued("k1") is not None
    assert (queue.room, queue.dropped) == (1, 0)
    sender.go.set()
    await queue.flush()
    assert sorted(sender.sent) == [f"k{i}" for i in range(1, BOUND)]
