"""What a shared cache tier provides for single-flight across processes: leases and
completion notices (``FlightStore``, which ``RedisCache`` and ``MemcachedCache`` offer),
and the notice a leader leaves its followers (``FlightNotice``). ``RedisFlight``
(``limpet.flight.shared``) runs flights on it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from limpet.errors import APIStatusError

__all__ = ["FlightNotice", "FlightOutcome", "FlightStore", "FlightWatch"]


class FlightOutcome(enum.Enum):
    """What a leader told its followers when it finished."""

    STORED = "stored"  # the entry is in the shared cache
    FAILED = "failed"  # a final error; followers raise it too (when they can verify it)
    ABANDONED = "abandoned"  # no entry and no final error: one follower should take over
    # The leader has its answer but none to read (too large to store, refused, not
    # storable): each follower calls at once, rather than each waiting for the one before.
    UNSHARED = "unshared"


@dataclass(frozen=True, slots=True)
class FlightNotice:
    """A leader's word on how its flight ended.

    ``verified`` says the store vouches that a leader sent it (a signature checked), and
    ``sent_at`` when (the leader's wall clock, signed with it): only a verified notice
    sent while the follower followed may make it raise its ``error`` (a signed notice
    copied from an earlier flight of the key is a replay). Any other notice is a hint to
    look again.
    """

    outcome: FlightOutcome
    error: APIStatusError | None = None
    verified: bool = False
    sent_at: float | None = None


class FlightWatch(Protocol):
    """A registration for one key's completion notice, made before re-checking the cache."""

    async def next(self) -> FlightNotice:
        """The next notice for the key; callers bound the wait with ``asyncio.timeout``."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class FlightStore(Protocol):
    """Shared leases and completion notices; every method may raise
    ``CacheUnavailableError``, and then flights fall back to this process alone (a
    ``CacheRejectedError`` when the command certainly did not take effect: any other
    failure to take a lease may have taken it, and the flight releases it when done).

    A lease always expires (``lease`` seconds after it was taken or last renewed), and
    its value changes at every renewal, so a follower can tell a live leader from a
    stuck lease by watching ``holder()``.
    """

    async def acquire(self, key: str, token: str, lease: float) -> bool:
        """Take the lease for ``token`` if nobody holds it."""
        ...

    async def renew(self, key: str, token: str, lease: float) -> bool:
        """Extend ``token``'s lease (and change its value); False when it is not held."""
        ...

    async def holder(self, key: str) -> str | None:
        """The lease's current value (different after every renewal), or None."""
        ...

    async def take_over(self, key: str, seen: str, token: str, lease: float) -> bool:
        """Give the lease to ``token`` if it still holds ``seen`` (one follower wins)."""
        ...

    async def release(
        self, key: str, token: str, notice: FlightNotice, entry: bytes | None, ttl: float
    ) -> None:
        """Atomically: store ``entry`` (if any) for ``ttl``, drop the lease if ``token``
        still holds it, and publish ``notice``. Attempted even while the store's breaker
        is open: a lease left behind stalls every other process. One that failed may be
        sent again later (no entry, ``ABANDONED``), so it must never drop a lease that
        ``token`` does not hold; an entry the store refuses must not keep the lease from
        being dropped or the notice from being sent."""
        ...

    async def watch(self, key: str) -> FlightWatch: ...
