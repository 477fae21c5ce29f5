"""Shared fixtures.

Redis tests run against a real ``redis-server``, never a fake:

- ``redis_url``: the shared server at ``LIMPET_REDIS_URL`` (default
  ``redis://127.0.0.1:6379/0``), with ``redis_prefix`` giving each test its own keys,
  and ``raw`` a plain client on it, to look behind a cache's back.
- ``redis_server`` / ``redis_server_factory``: private server processes a test may kill
  and restart.
- ``redis_cluster``: a three-node Redis Cluster on loopback, started once per session
  (the ``cluster`` marker), with ``cluster_prefix`` giving each test its own keys.

With no Redis available these tests are skipped, unless ``LIMPET_REQUIRE_REDIS=1`` (as in
CI), where a missing Redis is a failure rather than a silent skip.

``clock`` is a fake clock, and ``breaker`` a circuit breaker on it that opens after three
failures and half-opens ``COOLDOWN`` seconds later (tests/fakes.py).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlparse

import pytest
import redis
import redis.asyncio

from limpet.cache.breaker import CircuitBreaker
from tests.cluster_servers import REDIS_CLI_BINARY, RedisClusterServers
from tests.fakes import COOLDOWN, FakeClock
from tests.memcached_servers import MEMCACHED_BINARY, MemcachedServer, memcached_answers
from tests.redis_servers import REDIS_SERVER_BINARY, RedisServer, redis_answers

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_required() -> bool:
    return os.environ.get("LIMPET_REQUIRE_REDIS", "") == "1"


def _unavailable(reason: str) -> None:
    if _redis_required():
        pytest.fail(f"{reason}, and LIMPET_REQUIRE_REDIS=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def _shared_redis_url() -> str:
    url = os.environ.get("LIMPET_REDIS_URL", DEFAULT_REDIS_URL)
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if not redis_answers(host, port):
        # Only host and port: the URL may hold a password.
        _unavailable(f"no Redis answers PING at {host}:{port} (set LIMPET_REDIS_URL)")
    return url


@pytest.fixture
def redis_url(_shared_redis_url: str) -> str:
    """The URL of the shared Redis; use it with ``redis_prefix``, since tests share it."""
    return _shared_redis_url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted afterwards."""
    prefix = f"limpet-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.unlink(*keys)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client on the shared Redis, to write and read behind a cache's back."""
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test advances it."""
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    """Opens after three failures; half-opens once ``clock`` has advanced ``COOLDOWN``."""
    return CircuitBreaker(failure_threshold=3, cooldown=COOLDOWN, clock=clock)


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start private redis-server processes: ``factory("--maxmemory", "1mb")``; all are
    stopped at teardown."""
    if REDIS_SERVER_BINARY is None:
        _unavailable("redis-server is not installed")
    servers: list[RedisServer] = []

    def start(*extra_args: str) -> RedisServer:
        server = RedisServer(extra_args)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def redis_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A private redis-server for this test alone, to kill and restart at will."""
    return redis_server_factory()


def _start_cluster() -> RedisClusterServers:
    if REDIS_SERVER_BINARY is None or REDIS_CLI_BINARY is None:
        _unavailable("redis-server and redis-cli are needed for a Redis Cluster")
    try:
        return RedisClusterServers().start()
    except RuntimeError as exc:
        _unavailable(f"the Redis Cluster did not start: {exc}")
        raise  # unreachable: _unavailable skips or fails


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A three-node Redis Cluster (no replicas) on loopback, shared by the session: use it
    with ``cluster_prefix``. Never kill its nodes; use ``private_redis_cluster`` for that."""
    cluster = _start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def private_redis_cluster() -> Iterator[RedisClusterServers]:
    """A three-node Redis Cluster for this test alone, whose nodes it may kill (about two
    seconds to start: use sparingly)."""
    cluster = _start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_prefix(redis_cluster: RedisClusterServers) -> Iterator[str]:
    """A key prefix no other test uses on ``redis_cluster``; every key under it, on every
    node, is deleted afterwards."""
    prefix = f"limpet-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    for client in redis_cluster.clients():
        with client:
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            with client.pipeline(transaction=False) as pipe:
                for key in keys:  # one by one: the keys of one node span many slots
                    pipe.unlink(key)
                pipe.execute()


@pytest.fixture(autouse=True)
def _fresh_learned_minimums() -> Iterator[None]:
    """Learned prompt-cache minimums are per process: no test sees another's."""
    from limpet.providers.cache_minimums import LEARNED_MINIMUMS

    LEARNED_MINIMUMS.reset()
    yield
    LEARNED_MINIMUMS.reset()


# Memcached: a shared server (LIMPET_MEMCACHED_URL, or one started for the session) used
# with ``memcached_prefix``, and private servers a test may kill. With
# LIMPET_REQUIRE_MEMCACHED=1 (as in CI) a missing memcached fails instead of skipping.


def _memcached_unavailable(reason: str) -> None:
    if os.environ.get("LIMPET_REQUIRE_MEMCACHED", "") == "1":
        pytest.fail(f"{reason}, and LIMPET_REQUIRE_MEMCACHED=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def _shared_memcached_url() -> Iterator[str]:
    url = os.environ.get("LIMPET_MEMCACHED_URL")
    if url:
        host, _, port = url.partition("://")[2].split(",")[0].partition(":")
        if not memcached_answers(host, int(port or 11211)):
            _memcached_unavailable(f"no memcached answers at {host}:{port} (LIMPET_MEMCACHED_URL)")
        yield url
        return
    if MEMCACHED_BINARY is None:
        _memcached_unavailable("memcached is not installed and LIMPET_MEMCACHED_URL is unset")
    server = MemcachedServer().start()
    yield server.url
    server.kill()


@pytest.fixture
def memcached_url(_shared_memcached_url: str) -> str:
    """The URL of the shared memcached; use it with ``memcached_prefix``."""
    return _shared_memcached_url


@pytest.fixture
def memcached_prefix(memcached_url: str) -> str:
    """A key prefix no other test uses (Memcached cannot list keys to delete them
    afterwards; they age out or are evicted)."""
    return f"limpet-test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def memcached_server_factory() -> Iterator[Callable[..., MemcachedServer]]:
    """Start private memcached processes: ``factory("-m", "2")``; all are killed at
    teardown."""
    if MEMCACHED_BINARY is None:
        _memcached_unavailable("memcached is not installed")
    servers: list[MemcachedServer] = []

    def start(*extra_args: str) -> MemcachedServer:
        server = MemcachedServer(extra_args)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def memcached_server(memcached_server_factory: Callable[..., MemcachedServer]) -> MemcachedServer:
    """A private memcached for this test alone, to kill and restart at will."""
    return memcached_server_factory()
