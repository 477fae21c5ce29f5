"""RedisCache on a real three-node Redis Cluster: hash tags keep each operation on one
slot, keys still spread over every node, clear() reaches every primary, and flights
(leases, the release script, notices) work across the cluster.

The cluster is started once per session (``redis_cluster``); each test has its own
``cluster_prefix``. The shared contract suite runs on it too (``test_contract.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from limpet import CacheStatus, Client, Endpoint, FlightConfig, MemoryCache, RetryConfig
from limpet.cache.breaker import CircuitBreaker
from limpet.cache.redis.backend import RedisCache
from limpet.cache.tiered import TieredCache
from limpet.errors import CacheUnavailableError, ConfigurationError
from limpet.flight.store import FlightNotice, FlightOutcome
from limpet.testing import FakeGateway
from tests.cluster_servers import RedisClusterServers
from tests.fakes import FakeClock
from tests.redis_servers import free_port

pytestmark = pytest.mark.cluster

MODEL = "anthropic/claude-sonnet-4.6"
# These tests are about where keys go, not about speed: a loaded CI machine must not turn
# the first operation's topology discovery into a timeout.
PATIENT: dict[str, Any] = {"read_timeout": 1.0, "write_timeout": 1.0}


def slot(key: str) -> int:
    return key_slot(key.encode())


@pytest.fixture
async def cache(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> AsyncIterator[RedisCache]:
    async with RedisCache.from_url(
        redis_cluster.cache_url, prefix=cluster_prefix, **PATIENT
    ) as cache:
        yield cache


@pytest.fixture
async def raw(redis_cluster: RedisClusterServers) -> AsyncIterator[RedisCluster]:
    """A plain cluster client, to look at what the cache wrote."""
    client = RedisCluster.from_url(redis_cluster.url)
    yield client
    await client.aclose()


# -- Configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "cluster"),
    [
        ("redis+cluster://127.0.0.1:7000", False),
        ("rediss+cluster://127.0.0.1:7000", False),
        ("REDIS+CLUSTER://127.0.0.1:7000/0", False),
        ("redis://127.0.0.1:7000/0", True),
    ],
)
def test_a_cluster_from_a_url_or_a_flag(url: str, cluster: bool) -> None:
    # Construction needs no event loop and no server.
    cache = RedisCache.from_url(url, cluster=cluster)
    assert cache.cluster
    assert isinstance(cache.redis, RedisCluster)
    assert repr(cache).startswith("RedisCache(cluster:127.0.0.1:7000,")
    asyncio.run(cache.aclose())


def test_a_plain_url_is_one_server() -> None:
    cache = RedisCache.from_url("redis://127.0.0.1:7000/0")
    assert not cache.cluster
    assert cache.redis_key("k") == "limpet:k"
    assert cache.lock_key("k") == "limpet:lock:k"
    assert cache.generation_key("m") == "limpet:gen:m"
    asyncio.run(cache.aclose())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "redis+cluster://127.0.0.1:7000/1"}, "db"),
        ({"url": "unix:///tmp/redis.sock", "cluster": True}, "url"),
        ({"url": "redis://127.0.0.1:7000/0", "cluster": "yes"}, "cluster"),
        ({"url": "redis+cluster://127.0.0.1:7000", "prefix": "app{"}, "braces"),
        ({"url": "redis+cluster://127.0.0.1:7000", "prefix": "{app}:"}, "braces"),
    ],
)
def test_rejects_bad_cluster_configuration(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        RedisCache(**kwargs)


async def test_rejects_an_unusable_lent_client() -> None:
    plain = redis.asyncio.Redis(port=7000)
    decoding = RedisCluster(host="127.0.0.1", port=7000, decode_responses=True)
    try:
        with pytest.raises(ConfigurationError, match="not a RedisCluster"):
            RedisCache(client=plain, cluster=True)
        with pytest.raises(ConfigurationError, match="decodes"):
            RedisCache(client=decoding)
    finally:
        await plain.aclose()
        await decoding.aclose()


def test_a_cluster_repr_never_shows_the_password() -> None:
    cache = RedisCache.from_url("redis+cluster://alice:s3cret-pw@10.1.2.3:7000", prefix="app:")
    assert "s3cret" not in repr(cache) and "alice" not in repr(cache)
    assert "cluster:10.1.2.3:7000" in repr(cache)
    asyncio.run(cache.aclose())


# -- Key layout ------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["sha256:" + "ab" * 32, "k", "with}brace", "{tagged}", "x" * 300])
def test_an_entry_and_its_lease_share_a_slot(key: str) -> None:
    cache = RedisCache.from_url("redis+cluster://127.0.0.1:7000", prefix="app:")
    assert cache.redis_key(key) == "app:{" + key + "}"
    assert cache.lock_key(key) == "app:lock:{" + key + "}"
    assert slot(cache.redis_key(key)) == slot(cache.lock_key(key))
    asyncio.run(cache.aclose())


def test_every_generation_shares_one_slot() -> None:
    cache = RedisCache.from_url("redis+cluster://127.0.0.1:7000", prefix="app:")
    names = ["*", MODEL, "openai/gpt-5", "x" * 100]
    assert cache.generation_key("*") == "app:{gen}:*"
    assert len({slot(cache.generation_key(n)) for n in names}) == 1
    asyncio.run(cache.aclose())


async def test_entries_spread_over_every_node(
    cache: RedisCache, redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    for i in range(300):
        await cache.set(f"sha256:{i:064x}", b"v", 60)
    await cache.flush()
    assert cache.failed_writes == 0
    per_node = []
    for client in redis_cluster.clients():
        with client:
            # A set: SCAN may return a key twice while a node's table is rehashing.
            per_node.append(len(set(client.scan_iter(match=cluster_prefix + "*"))))
    assert sum(per_node) == 300
    assert all(count > 30 for count in per_node), per_node
    # Concurrent reads are batched across slots and nodes, and each gets its own value.
    keys = [f"sha256:{i:064x}" for i in range(300)] + ["absent"]
    assert await asyncio.gather(*(cache.get(k) for k in keys)) == [b"v"] * 300 + [None]
    assert 0 < cache._reads.batches < 300


async def test_a_burst_wider_than_the_pools_waits_for_a_connection_instead_of_failing(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    # redis-py's cluster pools fail a command at once when a node has no free connection;
    # a burst of 400 lease scripts and reads on pools of 4 per node waits its turn, within
    # each command's budget: nothing is rejected, nothing falls through.
    async with RedisCache.from_url(
        redis_cluster.cache_url, prefix=cluster_prefix, max_connections=4, **PATIENT
    ) as cache:
        store = cache.flight_store
        taken = await asyncio.gather(
            *(store.acquire(f"burst {i}", "token", 10.0) for i in range(400)),
            *(cache.get(f"burst {i}") for i in range(400)),
        )
        assert taken == [True] * 400 + [None] * 400
        assert cache.breaker_state == "closed"


async def test_entries_carry_a_native_ttl(cache: RedisCache, raw: RedisCluster) -> None:
    await cache.set("k", b"v", 30)
    await cache.flush()
    assert await raw.get(cache.redis_key("k")) == b"v"
    assert 29_000 < await raw.pttl(cache.redis_key("k")) <= 30_000


# -- Generations and clear() -----------------------------------------------------------


async def test_generations_on_a_cluster(cache: RedisCache, raw: RedisCluster) -> None:
    names = ["*", MODEL, "openai/gpt-5"]
    everything, model, other = await cache.generations(names)  # created in one slot
    assert await cache.bump_generation(MODEL) == model + 1
    assert await cache.bump_generation("*") == everything + 1
    assert await cache.bump_generation(MODEL) == model + 2
    assert await cache.generations(names) == [everything + 1, model + 2, other]
    assert await raw.get(cache.generation_key(MODEL)) == b"%d" % (model + 2)


async def test_clear_reaches_every_primary_and_keeps_generations(
    cache: RedisCache, redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    for i in range(1500):  # more than one SCAN step on some node
        await cache.set(f"k{i}", b"v", 60)
    await cache.flush()
    bumped = await cache.bump_generation(MODEL)
    # A lookalike prefix: its keys are not ours.
    async with RedisCache.from_url(
        redis_cluster.cache_url, prefix=cluster_prefix.rstrip(":") + "X:", **PATIENT
    ) as other:
        await other.set("theirs", b"v", 60)
        await other.flush()

        await cache.clear()
        remaining: set[bytes] = set()  # SCAN may return a key twice (a table rehashing)
        for client in redis_cluster.clients():
            with client:
                remaining.update(client.scan_iter(match=cluster_prefix.rstrip(":") + "*"))
        assert remaining == {
            cache.generation_key(MODEL).encode(),
            other.redis_key("theirs").encode(),
        }
        assert await cache.generations([MODEL]) == [bumped]
        await other.clear()


# -- Flights ---------------------------------------------------------------------------


async def test_a_flight_lease_and_its_release_on_a_cluster(cache: RedisCache) -> None:
    store = cache.flight_store
    key = "sha256:" + "cd" * 32
    assert await store.acquire(key, "token-a", 5.0)
    assert not await store.acquire(key, "token-b", 5.0)
    assert await store.holder(key) == "token-a:0"
    assert await store.renew(key, "token-a", 5.0)
    assert not await store.renew(key, "token-b", 5.0)
    assert await store.holder(key) == "token-a:1"  # a renewal shows
    assert not await store.take_over(key, "token-a:0", "token-c", 5.0)  # stale view

    watch = await store.watch(key)
    try:
        # One script stores the entry, drops the lease and publishes: one slot.
        await store.release(key, "token-a", FlightNotice(FlightOutcome.STORED), b"entry", 30.0)
        async with asyncio.timeout(5.0):
            notice = await watch.next()
    finally:
        watch.close()
    assert notice.outcome is FlightOutcome.STORED
    assert await cache.get(key) == b"entry"
    assert await store.holder(key) is None


async def test_two_clients_sharing_a_cluster_make_one_upstream_call(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    def make_client(gateway: FakeGateway) -> Client:
        cache = TieredCache(
            MemoryCache(),
            RedisCache.from_url(redis_cluster.cache_url, prefix=cluster_prefix, **PATIENT),
        )
        return Client(
            endpoints=[Endpoint("a", gateway.base_url("a"))],
            cache=cache,
            flight=FlightConfig(lease=0.3, poll=0.05),
            retry=RetryConfig(max_attempts=1),
        )

    ask: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,
    }
    async with FakeGateway(endpoints=("a",), latency=0.2) as gateway:
        async with make_client(gateway) as a, make_client(gateway) as b:
            results = await asyncio.gather(
                *(client.complete(**ask) for client in (a, b) for _ in range(10))
            )
        assert gateway.endpoint("a").calls == 1
        statuses = sorted(r.cache.value for r in results)
        assert statuses == ["coalesced"] * 19 + ["miss"]

        # A third process, with nothing in its own memory, reads Redis.
        async with make_client(gateway) as c:
            assert (await c.complete(**ask)).cache is CacheStatus.HIT
            assert c.stats.cache.hits == [0, 1]
        assert gateway.endpoint("a").calls == 1


# -- Faults ----------------------------------------------------------------------------


async def test_a_dead_cluster_is_unavailable_and_opens_the_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=2.0, clock=clock)
    rc = RedisCache.from_url(f"redis+cluster://127.0.0.1:{free_port()}", breaker=breaker)
    tiered = TieredCache(MemoryCache(), rc)
    try:
        for i in range(3):
            with pytest.raises(CacheUnavailableError):
                await rc.get(f"k{i}")
        assert rc.breaker_state == "open"
        for i in range(50):
            assert await tiered.get(f"k{i}") is None
        assert tiered.stats.misses == 50
        assert breaker.rejected >= 50
    finally:
        await tiered.aclose()


async def test_a_node_dying_fails_no_call(private_redis_cluster: RedisClusterServers) -> None:
    rc = RedisCache.from_url(private_redis_cluster.cache_url, **PATIENT)
    ask: dict[str, Any] = {"model": MODEL, "temperature": 0}
    async with FakeGateway(endpoints=("a",)) as gateway:
        # A tiny L1, so that repeats are read from Redis.
        cache = TieredCache(MemoryCache(max_entries=4), rc)
        async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))], cache=cache) as client:
            texts = [f"q{(i * 7) % 40}" for i in range(200)]
            for i, text in enumerate(texts):
                if i == 100:
                    private_redis_cluster.nodes[2].kill()  # a third of the slots are gone
                messages = [{"role": "user", "content": text}]
                completion = await client.complete(**ask, messages=messages)
                assert completion.content
            assert client.stats.errors == 0
            assert cache.stats.hits[1] > 0
            assert cache.stats.errors > 0
    # Closing the client closed every connection, though redis-py's own aclose() skips
    # that while a topology refresh is pending: an unclosed one fails the test when it is
    # collected (filterwarnings = error).


async def test_a_lent_cluster_client_stays_open(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        cache = RedisCache(client=client, prefix=cluster_prefix, **PATIENT)
        assert cache.cluster
        await cache.set("k", b"v", 60)
        await cache.aclose()
        assert await client.get(cache.redis_key("k")) == b"v"
    finally:
        await client.aclose()
