"""What a cache tier can do, declared once by each backend and asked one way.

A backend declares a ``TierCapabilities`` as its ``capabilities`` class attribute;
``capabilities_of()`` is the one place that reads it, so a user's backend that declares
nothing still works and gets ``UNDECLARED`` (a remote tier of unknown reach that offers
nothing beyond the ``CacheBackend`` contract). ``lowest_with()`` picks the tier that
serves a capability (the lowest one: the tier processes share), and ``TieredCache`` offers
it for its own tiers (``cache.generation_store``, ``cache.flight_store``, ...).

Declaring a capability promises the interface that goes with it (see each field), so a
tier found by its capabilities is used without probing it again.

Example:
    >>> from limpet.cache.memory import MemoryCache
    >>> capabilities_of(MemoryCache()).local
    True
    >>> capabilities_of(object()) == UNDECLARED
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias, TypeVar, cast, runtime_checkable

from limpet.errors import ConfigurationError

if TYPE_CHECKING:
    from limpet.cache.breaker import BreakerState
    from limpet.flight.store import FlightStore

__all__ = [
    "UNDECLARED",
    "Capability",
    "Flushable",
    "GuardedTier",
    "LeaseTier",
    "ReadableNow",
    "TierCapabilities",
    "WritableNow",
    "capabilities_of",
    "leading_local",
    "lowest_with",
    "shared_hmac_key",
    "value_room",
]

#: The name of one capability: a field of ``TierCapabilities``.
Capability: TypeAlias = Literal[
    "local", "shared", "generations", "leases", "pubsub", "breaker", "redis"
]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class TierCapabilities:
    """What one cache tier can do, beyond storing bytes under keys with a TTL.

    Attributes:
        local: answers in-process without I/O (``MemoryCache``), so a Client reads it
            before coalescing a miss, and its hits count as L1 hits.
        shared: other processes read what it stores (Redis, Memcached).
        generations: keeps the generation counters behind ``invalidate()`` for every
            process: a ``GenerationStore`` (``generations()``, ``bump_generation()``).
        leases: offers cross-process single-flight: a ``LeaseTier`` (``flight_store``,
            and the ``hmac_key`` that signs its notices).
        pubsub: its flight store pushes completion notices to followers (publish /
            subscribe) rather than leaving them to poll.
        breaker: sits behind a circuit breaker and writes in the background: a
            ``GuardedTier`` (``breaker_state``, ``failed_writes``, ``dropped_writes``).
        redis: lends its Redis to limpet's other shared state (the sticky router's
            affinity map, fleet counters): a ``RedisCache`` (``redis``, ``redis_key()``,
            ``run()``, ``read_key()``).
    """

    local: bool = False
    shared: bool = False
    generations: bool = False
    leases: bool = False
    pubsub: bool = False
    breaker: bool = False
    redis: bool = False


#: What a tier that declares nothing can do: nothing beyond the ``CacheBackend`` contract.
#: Not ``local`` (it may do I/O, so it is read inside the flight, like a remote tier).
UNDECLARED = TierCapabilities()


def capabilities_of(tier: object) -> TierCapabilities:
    """What ``tier`` declares in its ``capabilities`` attribute, or ``UNDECLARED``.

    The one capability probe: everything that asks what a tier can do asks here (or
    ``TieredCache``, which asks here).
    """
    declared = getattr(tier, "capabilities", UNDECLARED)
    return declared if isinstance(declared, TierCapabilities) else UNDECLARED


def lowest_with(tiers: Sequence[_T], capability: Capability) -> _T | None:
    """The lowest of ``tiers`` (fastest first) that has ``capability``, or None.

    The lowest: the tier that processes share, and the one generations, leases and other
    shared state belong in.
    """
    for tier in reversed(tiers):
        if getattr(capabilities_of(tier), capability):
            return tier
    return None


class LeaseTier(Protocol):
    """What a tier with ``leases`` offers: its flight store and the key signing notices."""

    hmac_key: bytes | None

    @property
    def flight_store(self) -> FlightStore: ...


class GuardedTier(Protocol):
    """What a tier with ``breaker`` reports: its breaker and its background writes."""

    @property
    def breaker_state(self) -> BreakerState: ...

    @property
    def failed_writes(self) -> int: ...

    @property
    def dropped_writes(self) -> int: ...


def shared_hmac_key(
    tiers: Sequence[object], capabilities: Sequence[TierCapabilities]
) -> bytes | None:
    """The one key the shared tiers were given (``RedisCache(hmac_key=...)``), for a
    ``TieredCache`` given none: its entries are signed with it, as the tier's notices are.
    (Unadopted, it signed the notices alone, and entries went unsigned: a forged one was
    served to a fleet that had set a key.)

    Raises:
        ConfigurationError: the tiers were given different keys.
    """
    keys = {
        key
        for tier, can in zip(tiers, capabilities, strict=True)
        if can.leases and (key := cast(LeaseTier, tier).hmac_key) is not None
    }
    if len(keys) > 1:
        raise ConfigurationError(
            "TieredCache: its tiers were given different hmac_keys; pass the one that signs "
            "entries as TieredCache(hmac_key=...)"
        )
    return next(iter(keys), None)


def value_room(tiers: Sequence[object], max_entry_bytes: int) -> int:
    """The largest value every one of ``tiers`` keeps: ``max_entry_bytes``, or less where
    a tier refuses more (``MemcachedCache.max_value_size``: its server's item size;
    ``MemoryCache.max_bytes``, keys and values together, less a key's room)."""
    limits = [max_entry_bytes]
    for tier in tiers:
        size = getattr(tier, "max_value_size", None)
        if type(size) is int:
            limits.append(size)
        total = getattr(tier, "max_bytes", None)
        if type(total) is int:
            limits.append(total - _KEY_ROOM)
    return min(limits)


# What a key takes of an in-process tier's bytes (a digest, and then some).
_KEY_ROOM = 256


@runtime_checkable
class Flushable(Protocol):
    """A tier that queues its writes (``RemoteCache``)."""

    async def flush(self) -> None: ...


@runtime_checkable
class ReadableNow(Protocol):
    """An in-process tier that also reads without a coroutine (``MemoryCache``)."""

    def get_now(self, key: str) -> bytes | None: ...


@runtime_checkable
class WritableNow(Protocol):
    """An in-process tier that also writes without a coroutine (``MemoryCache``)."""

    def set_now(self, key: str, value: bytes, ttl: float) -> None: ...


def leading_local(capabilities: Sequence[TierCapabilities]) -> int:
    """How many of the first tiers are local: a local tier below a remote one does not
    count (it is read after a round trip anyway)."""
    count = 0
    for can in capabilities:
        if not can.local:
            break
        count += 1
    return count
