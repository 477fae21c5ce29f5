"""The contract every cache backend keeps, run against each of them.

A new backend joins by adding a parameter to the ``backend`` fixture. Redis runs against a
real server (the ``redis`` marker) and a real three-node cluster (the ``cluster`` marker),
Memcached against a real memcached (the ``memcached`` marker), each under a key prefix of
its own; ``UserCache`` is what an application might write, declaring no capabilities.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from limpet.cache.base import CacheBackend
from limpet.cache.capabilities import UNDECLARED, TierCapabilities, capabilities_of
from limpet.cache.generations import GenerationStore
from limpet.cache.memcached.backend import MemcachedCache
from limpet.cache.memory import MemoryCache
from limpet.cache.redis.backend import RedisCache
from limpet.flight.store import FlightStore
from limpet.routing.affinity import RedisTier
from tests.fakes import FakeClock
from tests.redis_servers import eventually

_SHARED = TierCapabilities(shared=True, generations=True, leases=True, breaker=True)
_REDIS = TierCapabilities(
    shared=True, generations=True, leases=True, pubsub=True, breaker=True, redis=True
)


async def _nothing() -> None:
    return None


@dataclass
class Harness:
    """A backend, and how to let its writes land and its clock run, whatever it is."""

    backend: CacheBackend
    #: Wait until every write issued so far has landed.
    settle: Callable[[], Awaitable[None]] = _nothing
    #: Let this many seconds pass (a fake clock moves; a real one is left alone).
    elapse: Callable[[float], None] = lambda seconds: None
    #: What the backend says it can do.
    capabilities: TierCapabilities = UNDECLARED


class UserCache:
    """A backend as an application might write one: the five methods, nothing declared."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._items: dict[str, tuple[float, bytes]] = {}

    async def get(self, key: str) -> bytes | None:
        expires_at, value = self._items.get(key, (0.0, b""))
        return value if expires_at > self._clock() else None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._items.pop(key, None)
        if ttl > 0:
            self._items[key] = (self._clock() + ttl, value)

    async def delete(self, key: str) -> None:
        self._items.pop(key, None)

    async def clear(self) -> None:
        self._items.clear()

    async def aclose(self) -> None:
        self._items.clear()


@pytest.fixture(
    params=[
        "memory",
        "user",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.cluster),
        pytest.param("memcached", marks=pytest.mark.memcached),
    ]
)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param in ("memory", "user"):
        clock = FakeClock()

        def elapse(seconds: float) -> None:
            clock.now += seconds

        if request.param == "memory":
            memory = MemoryCache(clock=clock)
            yield Harness(memory, elapse=elapse, capabilities=TierCapabilities(local=True))
            await memory.aclose()
        else:
            user = UserCache(clock)
            yield Harness(user, elapse=elapse)
            await user.aclose()
    elif request.param == "memcached":
        # Patient: the contract is about what is stored, not about speed on a busy machine.
        memcached = MemcachedCache.from_url(
            request.getfixturevalue("memcached_url"),
            prefix=request.getfixturevalue("memcached_prefix"),
            read_timeout=1.0,
            write_timeout=1.0,
        )
        yield Harness(memcached, settle=memcached.flush, capabilities=_SHARED)
        await memcached.aclose()
        await memcached.aclose()  # idempotent
    else:
        if request.param == "cluster":
            # The first operation discovers the cluster's topology: let a busy CI machine
            # take its time, this suite is not about speed.
            redis = RedisCache.from_url(
                request.getfixturevalue("redis_cluster").url,
                prefix=request.getfixturevalue("cluster_prefix"),
                cluster=True,
                read_timeout=1.0,
                write_timeout=1.0,
            )
        else:
            url: str = request.getfixturevalue("redis_url")
            prefix: str = request.getfixturevalue("redis_prefix")
            redis = RedisCache.from_url(url, prefix=prefix)
        yield Harness(redis, settle=redis.flush, capabilities=_REDIS)
        await redis.aclose()
        await redis.aclose()  # idempotent


async def test_is_a_cache_backend(backend: Harness) -> None:
    assert isinstance(backend.backend, CacheBackend)


async def test_reports_its_capabilities(backend: Harness) -> None:
    assert capabilities_of(backend.backend) == backend.capabilities


async def test_keeps_what_its_capabilities_promise(backend: Harness) -> None:
    cache: object = backend.backend
    can = capabilities_of(cache)
    assert isinstance(cache, GenerationStore) == can.generations
    assert isinstance(getattr(cache, "flight_store", None), FlightStore) == can.leases
    if can.leases:
        assert getattr(cache, "hmac_key", b"absent") is None  # TieredCache may give it one
    assert all(
        hasattr(cache, name) == can.breaker
        for name in ("breaker_state", "failed_writes", "dropped_writes")
    )
    assert isinstance(cache, RedisTier) == can.redis
    assert not (can.local and can.shared)


async def test_get_of_a_missing_key_is_none(backend: Harness) -> None:
    assert await backend.backend.get("missing") is None


async def test_set_then_get(backend: Harness) -> None:
    cache = backend.backend
    await cache.set("k", b"value", 60)
    await backend.settle()
    assert await cache.get("k") == b"value"


async def test_a_value_is_readable_before_its_write_lands(backend: Harness) -> None:
    await backend.backend.set("k", b"value", 60)
    assert await backend.backend.get("k") == b"value"


async def test_overwrite_keeps_the_latest(backend: Harness) -> None:
    cache = backend.backend
    await cache.set("k", b"first", 60)
    await backend.settle()
    await cache.set("k", b"second", 60)
    await cache.set("k", b"third", 60)
    assert await cache.get("k") == b"third"
    await backend.settle()
    assert await cache.get("k") == b"third"


async def test_delete(backend: Harness) -> None:
    cache = backend.backend
    await cache.set("k", b"v", 60)
    await cache.set("other", b"w", 60)
    await backend.settle()
    await cache.delete("k")
    assert await cache.get("k") is None
    assert await cache.get("other") == b"w"


async def test_delete_of_a_missing_key_is_fine(backend: Harness) -> None:
    await backend.backend.delete("missing")
    assert await backend.backend.get("missing") is None


async def test_delete_right_after_set_wins(backend: Harness) -> None:
    cache = backend.backend
    await cache.set("k", b"v", 60)
    await cache.delete("k")
    await backend.settle()
    assert await cache.get("k") is None


async def test_clear_removes_everything(backend: Harness) -> None:
    cache = backend.backend
    for i in range(50):
        await cache.set(f"k{i}", b"v", 60)
    await backend.settle()
    await cache.set("queued", b"v", 60)
    await cache.clear()
    await backend.settle()
    for key in [*(f"k{i}" for i in range(50)), "queued"]:
        assert await cache.get(key) is None


async def test_entry_expires_after_its_ttl(backend: Harness) -> None:
    cache = backend.backend
    await cache.set("short", b"v", 0.05)
    await cache.set("long", b"v", 60)
    await backend.settle()
    backend.elapse(0.05)

    async def expired() -> bool:
        return await cache.get("short") is None

    await eventually(expired, deadline=3.0, what="the 50 ms entry expiring")
    assert await cache.get("long") == b"v"


async def test_entry_lives_until_its_ttl(backend: Harness) -> None:
    cache = backend.backend
    await cache.set("k", b"v", 60)
    await backend.settle()
    backend.elapse(59)
    assert await cache.get("k") == b"v"


async def test_an_infinite_ttl_never_expires(backend: Harness) -> None:
    cache = backend.backend
    await cache.set("k", b"v", float("inf"))
    await backend.settle()
    backend.elapse(10**9)
    assert await cache.get("k") == b"v"


@pytest.mark.parametrize("ttl", [0, -1.0])
async def test_a_nonpositive_ttl_stores_nothing(backend: Harness, ttl: float) -> None:
    cache = backend.backend
    await cache.set("k", b"old", 60)
    await backend.settle()
    await cache.set("k", b"new", ttl)
    assert await cache.get("k") is None
    await backend.settle()
    assert await cache.get("k") is None


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"plain ascii",
        "h\u00e9llo w\u00f6rld \U0001f980".encode(),
        b"\x00\x01\x02\xff\xfe\xfd\x80\x81",  # not UTF-8
        bytes(range(256)),
        b"\r\n$-1\r\n*3\r\n",  # RESP framing inside a value
        bytes(range(256)) * 1024,  # 256 KiB
    ],
    ids=["empty", "ascii", "utf8", "non-utf8", "all-bytes", "resp-framing", "256KiB"],
)
async def test_bytes_round_trip_exactly(backend: Harness, value: bytes) -> None:
    cache = backend.backend
    await cache.set("k", value, 60)
    await backend.settle()
    got = await cache.get("k")
    assert got == value
    assert type(got) is bytes


@pytest.mark.parametrize(
    "key", ["a", "with space", "k\u00e9y:\u2603", "*", "[glob]?", "x" * 512, "sha256:" + "f" * 64]
)
async def test_any_string_is_a_key(backend: Harness, key: str) -> None:
    cache = backend.backend
    await cache.set(key, b"v", 60)
    await cache.set(key + "-sibling", b"w", 60)
    await backend.settle()
    assert await cache.get(key) == b"v"
    await cache.delete(key)
    assert await cache.get(key) is None
    assert await cache.get(key + "-sibling") == b"w"


async def test_many_keys(backend: Harness) -> None:
    cache = backend.backend
    for i in range(300):
        await cache.set(f"key-{i}", i.to_bytes(4, "big"), 60)
    await backend.settle()
    for i in range(300):
        assert await cache.get(f"key-{i}") == i.to_bytes(4, "big")
