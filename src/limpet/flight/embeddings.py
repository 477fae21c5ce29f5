"""Per-input single-flight across processes for ``embed()``, batched.

Each input this process must send takes its own lease (``RedisFlight``, one acquire
per input, concurrently). An input whose lease another process holds is followed: its
vector is read from the shared tier when that process stores it (or, if it dies, taken
over). The inputs this process leads are not sent one by one: they wait until every input
of the call has either led or started following, and then go upstream together, in the
usual batches; an input taken over later goes in a batch of its own moment.

Cost, per input sent: one acquire, one more read of the shared tier once the lease is
held (another process may have stored the vector since this call's lookup), and one
release script (which stores the vector and drops the lease); per input followed: a read,
a subscription registration and a lease check per ``poll`` of waiting.

The lease scripts of one call run ``MAX_LEASE_SCRIPTS`` at a time, not one per input at
once: a thousand inputs were two thousand scripts queued on the connection pool at once,
which took every connection of the process (its other calls waited behind them) for no
gain, since the scripts of one process go no faster than its connections carry them. An
input holds its place while it takes its lease (and reads once more), gives it up while
it waits for the call's batches or follows another process, and takes one again to store
its vector and release its lease; so no input ever waits for a place while holding one
that another input waits on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Generic, TypeVar, cast

from limpet.flight.shared import RedisFlight, Shared

__all__ = ["MAX_LEASE_SCRIPTS", "SendResults", "SharedFetch", "fetch_shared"]

#: Inputs of one call that take or release their leases at once.
MAX_LEASE_SCRIPTS = 32

# One input's vector, whatever it carries (the packed floats, what they cost).
V = TypeVar("V")

# What one batch of inputs brought back: each key's vector, or the error of its request.
SendResults = Mapping[str, V | BaseException]


class SharedFetch(Generic[V]):
    """What ``fetch_shared`` found: vectors by key, which of them another process sent,
    the error of every input that failed, and which inputs this process sent itself."""

    __slots__ = ("failed", "from_others", "sent_here", "vectors")

    def __init__(self) -> None:
        self.vectors: dict[str, V] = {}
        self.from_others: set[str] = set()
        self.failed: dict[str, BaseException] = {}
        self.sent_here: set[str] = set()

    def add(self, key: str, outcome: tuple[V, bool] | BaseException) -> None:
        """Note how ``key``'s flight ended: its vector and whether this process led, or
        its error (anything but an ``Exception`` is raised again)."""
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):
                raise outcome
            self.failed[key] = outcome
            return
        vector, led = outcome
        self.vectors[key] = vector
        if not led:
            self.from_others.add(key)


# One input, whatever it is (a text, a token array): sent as it is given.
Input = TypeVar("Input")


async def fetch_shared(
    flight: RedisFlight[V],
    texts: Mapping[str, Input],
    send: Callable[[list[tuple[str, Input]]], Awaitable[SendResults[V]]],
    read: Callable[[str], Awaitable[V | None]],
    share: Callable[[str, V], Awaitable[tuple[Shared, float]]],
) -> SharedFetch[V]:
    """The vectors of ``texts`` (by key), each sent upstream by one process only.

    Args:
        flight: the cross-process leases and notices.
        texts: the inputs by key.
        send: sends a batch of (key, text) upstream; never raises, gives each key's
            vector or its error.
        read: a key's vector from the shared tier, or None.
        share: stores a vector this process got, and gives its entry bytes and TTL for
            the flight to publish (``UNSHAREABLE``: the cache keeps none).
    """
    fetched: SharedFetch[V] = SharedFetch()
    batches = _Batches(texts, send)
    places = asyncio.Semaphore(MAX_LEASE_SCRIPTS)

    async def one(key: str) -> tuple[V, bool]:
        place = _Place(places)

        async def lead() -> tuple[V, Shared, float]:
            await place.take()  # held from the acquire, or taken again by a take-over
            # Once more, lease in hand: another process may have stored it since this
            # call's lookup (then nothing is sent, and its followers find it).
            stored = await read(key)
            if stored is not None:
                fetched.from_others.add(key)
                batches.decided(key)
                return stored, None, 0.0
            place.give_up()  # the batches wait for every input of the call
            fetched.sent_here.add(key)
            try:
                vector = await batches.send(key)
            finally:
                # For the release script the flight runs next (of a failed input too),
                # unless cancelled: a cancelled input does not wait for a place.
                if not _cancelling():
                    await place.take()
            data, ttl = await share(key, vector)
            return vector, data, ttl

        async def follow() -> V | None:
            place.give_up()  # following may take a whole lease
            batches.decided(key)
            async with places:  # a thousand followers woken by one notice: 32 reads at once
                return await read(key)

        await place.take()
        try:
            # No recheck: lead() looks once more itself, within the call's batching.
            return await flight.do(key, lead, follow)
        finally:
            place.give_up()
            batches.decided(key)

    keys = list(texts)
    try:
        outcomes = await asyncio.gather(*(one(key) for key in keys), return_exceptions=True)
    finally:
        batches.cancel()
    for key, outcome in zip(keys, outcomes, strict=True):
        fetched.add(key, outcome)
    return fetched


class _Batches(Generic[Input, V]):
    """The inputs this call leads, held until every input of the call has either led or
    started following, then sent upstream together: one set of batches, not one request
    per input as the leases come back."""

    __slots__ = ("_pending", "_send", "_sending", "_texts", "_undecided")

    def __init__(
        self,
        texts: Mapping[str, Input],
        send: Callable[[list[tuple[str, Input]]], Awaitable[SendResults[V]]],
    ) -> None:
        self._texts = texts
        self._send = send
        self._undecided = set(texts)
        self._pending: dict[str, asyncio.Future[V]] = {}
        self._sending: set[asyncio.Future[None]] = set()

    def decided(self, key: str) -> None:
        """``key`` has led or started following (again: a no-op)."""
        if key in self._undecided:
            self._undecided.discard(key)
            self._flush()

    async def send(self, key: str) -> V:
        """``key``'s vector, sent upstream with the others this call leads."""
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        self.decided(key)
        self._flush()  # a takeover after the first flush goes at once
        return await future

    def cancel(self) -> None:
        """Stop the batches still being sent."""
        for task in list(self._sending):
            task.cancel()

    def _flush(self) -> None:
        if self._undecided or not self._pending:
            return
        batch = dict(self._pending)
        self._pending.clear()
        task = asyncio.ensure_future(self._run(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _run(self, batch: dict[str, asyncio.Future[V]]) -> None:
        results: SendResults[V] = {}
        try:
            results = await self._send([(key, self._texts[key]) for key in batch])
        finally:
            for key, future in batch.items():
                if not future.done():
                    _settle(future, results.get(key), key in results)  # absent: cancelled


class _Place:
    """One input's place among the call's ``MAX_LEASE_SCRIPTS``: taken and given up as
    it goes (each a no-op when already so)."""

    __slots__ = ("_held", "_places")

    def __init__(self, places: asyncio.Semaphore) -> None:
        self._places = places
        self._held = False

    async def take(self) -> None:
        if not self._held:
            await self._places.acquire()
            self._held = True

    def give_up(self) -> None:
        if self._held:
            self._held = False
            self._places.release()


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _settle(future: asyncio.Future[V], result: V | BaseException | None, came: bool) -> None:
    """Settle ``future`` by what its batch brought back (``came``: anything at all)."""
    if not came:
        future.cancel()
    elif isinstance(result, BaseException):
        future.set_exception(result)
        future.exception()  # seen: its flight may have been given up on
    else:
        future.set_result(cast(V, result))
