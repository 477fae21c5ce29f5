"""RedisFlight over an in-memory store whose commands, once sent, land whatever happens
to their caller, and may land after a later command of the same process (which went out
on another connection): as Memcached's threads serve one connection's ``add`` after
another's ``gets``. Found by tests/integration/test_soak.py on Memcached. And over stores
whose acquire fails after it landed (its reply late or lost) or without taking effect
(``CacheRejectedError``): only a lease that may be the flight's own is released."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

import pytest

from limpet.config import FlightConfig
from limpet.errors import CacheRejectedError, CacheUnavailableError, InternalServerError
from limpet.flight.shared import _MAX_UNRELEASED, RedisFlight
from limpet.flight.store import FlightNotice

KEY = "k"
# Short, so a follower takes a lease nobody renews over at once (it polls every 10 ms).
CONFIG = FlightConfig(lease=0.01, poll=0.01, follow_timeout=60.0)

Taking = Literal["acquire", "take_over"]


class LateStore:
    """One key's lease. The ``late`` command (``acquire`` or ``take_over``) is sent at once
    but lands only once ``land`` is set, even if its caller was cancelled meanwhile;
    every other command lands at once."""

    def __init__(self, late: Taking, lease: str | None = None) -> None:
        self.late = late
        self.lease = lease
        self.sent = asyncio.Event()
        self.land = asyncio.Event()
        self.landing: asyncio.Task[bool] | None = None

    async def _swap(self, command: Taking, expected: str | None, value: str) -> bool:
        def apply() -> bool:
            if self.lease != expected:
                return False
            self.lease = value
            return True

        if command != self.late:
            return apply()

        async def later() -> bool:
            await self.land.wait()
            return apply()

        self.landing = asyncio.create_task(later())  # on the wire: nothing recalls it
        self.sent.set()
        return await asyncio.shield(self.landing)

    async def acquire(self, key: str, token: str, lease: float) -> bool:
        return await self._swap("acquire", None, token + ":0")

    async def take_over(self, key: str, seen: str, token: str, lease: float) -> bool:
        return await self._swap("take_over", seen, token + ":0")

    async def renew(self, key: str, token: str, lease: float) -> bool:
        return self.lease is not None and self.lease.startswith(token + ":")

    async def holder(self, key: str) -> str | None:
        return self.lease

    async def release(
        self, key: str, token: str, notice: FlightNotice, entry: bytes | None, ttl: float
    ) -> None:
        if self.lease is not None and self.lease.startswith(token + ":"):
            self.lease = None

    async def watch(self, key: str) -> Silent:
        return Silent()


class Silent:
    """A watch that hears no notice: the follower polls."""

    async def next(self) -> FlightNotice:
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")

    def close(self) -> None:
        pass


async def nothing_stored() -> str | None:
    return None


async def never_called() -> tuple[str, bytes | None, float]:
    raise AssertionError("the cancelled caller led")


@pytest.mark.parametrize("taking", ["acquire", "take_over"])
async def test_a_flight_cancelled_taking_the_lease_leaves_none_though_its_command_lands_late(
    taking: Taking,
) -> None:
    # For a take-over: a lease its leader left (it is never renewed).
    store = LateStore(taking, None if taking == "acquire" else "gone:0")
    flight = RedisFlight[str](store, CONFIG)
    task = asyncio.create_task(flight.do(KEY, never_called, nothing_stored))
    await store.sent.wait()
    task.cancel()
    for _ in range(10):  # whatever the flight sends to undo it goes out now...
        await asyncio.sleep(0)
    store.land.set()  # ...and only then does the command it was cancelled in land
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.landing is not None
    await store.landing  # landed, after the cancellation
    assert store.lease is None  # taken, then released: no process waits on it


class CountingStore(LateStore):
    """A store whose commands all land at once; it counts releases and says when the
    lease is renewed."""

    def __init__(self, lease: str | None = None) -> None:
        super().__init__("take_over", lease)  # no late command
        self.releases = 0
        self.renewed = asyncio.Event()

    async def renew(self, key: str, token: str, lease: float) -> bool:
        self.renewed.set()
        return await super().renew(key, token, lease)

    async def release(
        self, key: str, token: str, notice: FlightNotice, entry: bytes | None, ttl: float
    ) -> None:
        self.releases += 1
        await super().release(key, token, notice, entry, ttl)


class FaultyStore(CountingStore):
    """A store whose acquire fails: after it landed (``landed``: its reply lost or late,
    ``CacheUnavailableError``) or without taking effect (``CacheRejectedError``)."""

    def __init__(self, landed: bool, lease: str | None = None) -> None:
        super().__init__(lease)
        self.landed = landed

    async def acquire(self, key: str, token: str, lease: float) -> bool:
        if not self.landed:
            raise CacheRejectedError("SET skipped: circuit breaker open")
        await super().acquire(key, token, lease)
        raise CacheUnavailableError("EVAL acquire timed out after 100 ms")


async def failing_upstream() -> tuple[str, bytes | None, float]:
    # Nothing is stored: were the lease left, other processes would have only the lease.
    raise InternalServerError("upstream failed", status_code=500)


async def test_a_lease_that_landed_while_its_acquire_failed_is_released_by_its_lone_leader() -> (
    None
):
    store = FaultyStore(landed=True)
    flight = RedisFlight[str](store, CONFIG)
    with pytest.raises(InternalServerError):
        await flight.do(KEY, failing_upstream, nothing_stored)
    assert store.releases == 1
    assert store.lease is None  # no process waits a whole lease on it


async def test_a_flight_whose_acquire_was_rejected_sends_no_release() -> None:
    # The store never took it (an open breaker): a release would only wait on a store
    # that is down, after every such call's answer.
    store = FaultyStore(landed=False)
    flight = RedisFlight[str](store, CONFIG)
    with pytest.raises(InternalServerError):
        await flight.do(KEY, failing_upstream, nothing_stored)
    assert store.releases == 0 and store.lease is None


async def test_a_maybe_lease_that_is_another_leaders_is_left_to_it_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FaultyStore(landed=True, lease="other:0")  # the acquire failed: not ours

    async def lead() -> tuple[str, bytes | None, float]:
        await store.renewed.wait()  # its renewal finds the lease is not its own
        return "answer", b"answer", 60.0

    flight = RedisFlight[str](store, CONFIG)
    async with asyncio.timeout(10):  # a failure, not a hang, when nothing renews
        assert await flight.do(KEY, lead, nothing_stored) == ("answer", True)
    assert store.lease == "other:0" and store.releases == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


class BlindToLeases(FaultyStore):
    """The lease is another's, and reading who holds it fails."""

    async def acquire(self, key: str, token: str, lease: float) -> bool:
        return await LateStore.acquire(self, key, token, lease)  # answered: no

    async def holder(self, key: str) -> str | None:
        raise CacheUnavailableError("GET lease timed out after 100 ms")


async def test_a_follower_whose_lease_check_failed_leads_alone_and_sends_no_release() -> None:
    # Its own acquire was answered (no), so no lease of its own can be in the store.
    store = BlindToLeases(landed=True, lease="other:0")
    flight = RedisFlight[str](store, CONFIG)

    async def lead() -> tuple[str, bytes | None, float]:
        return "answer", b"answer", 60.0

    assert await flight.do(KEY, lead, nothing_stored) == ("answer", True)
    assert store.releases == 0 and store.lease == "other:0"


async def test_an_entry_stored_just_before_the_lease_was_taken_is_served_not_fetched_again() -> (
    None
):
    # Another process led, stored the entry and dropped the lease between this caller's
    # miss and its acquire: the lease is free, and taking it must not mean calling
    # upstream again. The leader reads the shared tier once more with the lease held,
    # serves what it finds, and drops the lease.
    store = CountingStore()
    flight = RedisFlight[str](store, CONFIG)
    reads = 0

    async def stored_meanwhile() -> str | None:
        nonlocal reads
        reads += 1
        return "the other process's answer"

    assert await flight.do(KEY, never_called, nothing_stored, recheck=stored_meanwhile) == (
        "the other process's answer",
        False,
    )
    assert reads == 1
    assert store.releases == 1 and store.lease is None


class Paused(FaultyStore):
    """A store that paused as a lease was taken: the acquire lands but its reply is
    lost, and releases are not answered until ``answering`` is set; ``failing`` is set
    once three have failed (the flight's own, then two sent again), and ``released`` by
    the first that gets through."""

    def __init__(
        self, lease: str | None = None, refusal: CacheUnavailableError | None = None
    ) -> None:
        super().__init__(landed=True, lease=lease)
        self.answering = False
        self.failed = 0
        self.failing = asyncio.Event()
        self.released = asyncio.Event()
        # What a release sent again meets while the store does not answer.
        self.refusal = refusal or CacheUnavailableError("EVAL release timed out after 100 ms")

    async def release(
        self, key: str, token: str, notice: FlightNotice, entry: bytes | None, ttl: float
    ) -> None:
        if not self.answering:
            self.failed += 1
            if self.failed >= 3:
                self.failing.set()
            if self.failed == 1:
                raise CacheUnavailableError("EVAL release timed out after 100 ms")
            raise self.refusal
        await super().release(key, token, notice, entry, ttl)
        self.released.set()


async def answer() -> tuple[str, bytes | None, float]:
    return "answer", b"answer", 60.0


@pytest.mark.parametrize(
    "refusal",
    [
        None,
        # Not sent, for now: the pool busy, or the breaker open after the pause.
        CacheRejectedError("redis EVAL: no free connection (127.0.0.1:6379/0)"),
        CacheRejectedError("redis EVAL skipped: circuit breaker open (127.0.0.1:6379/0)"),
    ],
)
@pytest.mark.parametrize("taken_meanwhile", [False, True])
async def test_a_release_the_store_did_not_answer_is_sent_again_once_it_answers(
    taken_meanwhile: bool, refusal: CacheUnavailableError | None
) -> None:
    store = Paused(refusal=refusal)
    flight = RedisFlight[str](store, CONFIG)
    try:
        assert await flight.do(KEY, answer, nothing_stored) == ("answer", True)
        assert store.lease is not None  # the acquire landed; its release did not
        assert flight.unreleased == 1
        async with asyncio.timeout(10):
            await store.failing.wait()  # sent again while the store does not answer
            if taken_meanwhile:  # it expired, and another process's leader took it
                store.lease = "other:0"
            store.answering = True
            await store.released.wait()
        # Dropped, so nobody waits a whole lease on it; but never another leader's.
        assert store.lease == ("other:0" if taken_meanwhile else None)
    finally:
        await flight.aclose()


async def test_leases_kept_to_release_again_are_bounded_and_let_go_at_aclose() -> None:
    store = Paused()
    flight = RedisFlight[str](store, CONFIG)
    for i in range(_MAX_UNRELEASED + 10):
        assert await flight.do(f"{KEY}-{i}", answer, nothing_stored) == ("answer", True)
    assert flight.unreleased == _MAX_UNRELEASED
    await flight.aclose()
    assert flight.unreleased == 0
