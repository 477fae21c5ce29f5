"""The shared tiers the soaks run on (``soak_adversity.Shared``), one per param of their
``shared`` fixture: ``redis`` (one server); ``redis-signed`` (the same, every cache and
both Clients' ``TieredCache`` with one ``hmac_key``: signed entries and flight notices, so
a leader's final error, such as a refused request's, reaches the other process's
followers verified); ``redis-cluster`` (the session's three-node Redis Cluster); and
``memcached``. Each gives two caches, each behind its own breaker on a fake clock, and
the test's own inspector; on Redis, an admin connection per server (per node of a
cluster) and the client names the Clients' connections announce, so that the test kills
theirs and no other."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio

from limpet import MemcachedCache, RedisCache
from limpet.cache.breaker import CircuitBreaker
from limpet.cache.memcached.leases import MemcachedFlightStore
from limpet.cache.redis.leases import RedisFlightStore
from limpet.errors import CacheUnavailableError
from limpet.flight.store import FlightNotice
from tests.cluster_servers import RedisClusterServers
from tests.fakes import FakeClock
from tests.integration.soak_adversity import COOLDOWN, Shared
from tests.redis_servers import named

# Generous: these soaks are about what is served, not speed; a loaded machine must not
# turn a slow reply into an outage nothing drew.
PATIENT: dict[str, Any] = {"read_timeout": 1.0, "write_timeout": 1.0}
HMAC_KEY = b"limpet soak fleet key"


def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, cooldown=COOLDOWN, clock=clock)


@contextlib.asynccontextmanager
async def redis_shared(
    url: str, prefix: str, servers: list[str], hmac_key: bytes | None = None
) -> AsyncIterator[Shared]:
    """Two caches on the Redis (or cluster) at ``url``, with an admin connection to each
    of ``servers`` (the URLs of its servers: one, or every node of a cluster)."""
    names = [f"limpet-soak-{uuid.uuid4().hex[:12]}-{side}" for side in "ab"]
    clocks = (FakeClock(), FakeClock())
    signed: dict[str, Any] = {"hmac_key": hmac_key, **PATIENT}
    a, b = (
        RedisCache.from_url(named(url, name), prefix=prefix, breaker=breaker(clock), **signed)
        for name, clock in zip(names, clocks, strict=True)
    )
    async with contextlib.AsyncExitStack() as stack:
        inspector = RedisCache.from_url(url, prefix=prefix, **signed)
        await stack.enter_async_context(inspector)
        admins = tuple(redis.asyncio.Redis.from_url(server) for server in servers)
        for admin in admins:
            await stack.enter_async_context(admin)
        yield Shared((a, b), clocks, inspector, admins, frozenset(names), hmac_key)


def redis_tier(request: pytest.FixtureRequest) -> contextlib.AbstractAsyncContextManager[Shared]:
    url: str = request.getfixturevalue("redis_url")
    return redis_shared(url, request.getfixturevalue("redis_prefix"), [url])


def signed_redis_tier(
    request: pytest.FixtureRequest,
) -> contextlib.AbstractAsyncContextManager[Shared]:
    url: str = request.getfixturevalue("redis_url")
    return redis_shared(url, request.getfixturevalue("redis_prefix"), [url], HMAC_KEY)


def cluster_tier(request: pytest.FixtureRequest) -> contextlib.AbstractAsyncContextManager[Shared]:
    cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
    prefix: str = request.getfixturevalue("cluster_prefix")
    url = cluster.cache_url
    nodes = [f"redis://127.0.0.1:{port}/0" for port in cluster.ports]
    return redis_shared(url, prefix, nodes)


@contextlib.asynccontextmanager
async def memcached_tier(request: pytest.FixtureRequest) -> AsyncIterator[Shared]:
    url: str = request.getfixturevalue("memcached_url")
    prefix: str = request.getfixturevalue("memcached_prefix")
    clocks = (FakeClock(), FakeClock())
    a, b = (
        MemcachedCache.from_url(url, prefix=prefix, breaker=breaker(clock), **PATIENT)
        for clock in clocks
    )
    async with MemcachedCache.from_url(url, prefix=prefix, **PATIENT) as inspector:
        yield Shared((a, b), clocks, inspector)


TIERS: dict[str, Callable[[pytest.FixtureRequest], contextlib.AbstractAsyncContextManager[Shared]]]
TIERS = {
    "redis": redis_tier,
    "redis-signed": signed_redis_tier,
    "redis-cluster": cluster_tier,
    "memcached": memcached_tier,
}
# The ``params`` of a test's shared tier fixture.
TIER_PARAMS = [
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("redis-signed", marks=pytest.mark.redis),
    pytest.param("redis-cluster", marks=pytest.mark.cluster),
    pytest.param("memcached", marks=pytest.mark.memcached),
]


def tier_params(*names: str) -> list[Any]:
    """The params of these tiers only, for a test that runs on some (``indirect=True``)."""
    found = [param for param in TIER_PARAMS if param.values[0] in names]
    assert len(found) == len(names), f"no tier among {names}"
    return found


def spy_on_releases(shared: Shared, monkeypatch: pytest.MonkeyPatch) -> None:
    """Record the keys whose lease release the shared tier refused (each may leave its
    lease behind, by design: it expires, or a follower takes it over)."""
    store = RedisFlightStore if isinstance(shared.caches[0], RedisCache) else MemcachedFlightStore
    release = store.release

    async def recorded(
        self: Any, key: str, token: str, notice: FlightNotice, entry: bytes | None, ttl: float
    ) -> None:
        try:
            await release(self, key, token, notice, entry, ttl)
        except CacheUnavailableError:
            shared.refused_releases.add(key)
            raise

    monkeypatch.setattr(store, "release", recorded)


@contextlib.asynccontextmanager
async def soak_tier(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Shared]:
    """The shared tier ``request.param`` names, its refused releases recorded."""
    async with TIERS[request.param](request) as tier:
        spy_on_releases(tier, monkeypatch)
        yield tier
