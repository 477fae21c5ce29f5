"""Whatever happens to a stored entry's bytes (truncated, bits flipped, spliced, grafted
onto another entry), ``complete()`` and ``stream()`` give a well-formed completion (a hit)
or call upstream (a counted corrupt miss), never an exception; and ``embed()`` gives each
input its own vector (a hit) or calls upstream for it (a counted corrupt miss), never
another vector. In a Memory tier, in Redis, in a Redis Cluster and in Memcached, signed
and unsigned; a signed entry that was changed at all is never a hit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from limpet import (
    CacheStatus,
    Client,
    Completion,
    Endpoint,
    MemcachedCache,
    MemoryCache,
    RedisCache,
    TieredCache,
)
from limpet.cache.base import CacheBackend
from limpet.pipeline.embeddings import Embedder
from limpet.testing import FakeGateway
from limpet.testing.embeddings import fake_vector
from tests.cluster_servers import RedisClusterServers
from tests.integration.chat import ask

# For tests about what is stored, not about Redis's speed: a loaded machine must not turn
# them into timeout tests.
PATIENT: dict[str, Any] = {"read_timeout": 1.0, "write_timeout": 1.0}
HMAC_KEY = b"fleet-secret"
VECTORS_MODEL = "openai/text-embedding-3-small"
# The tier the mutated entry is read from, each on its real server.
WHERE = [
    "memory",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("memcached", marks=pytest.mark.memcached),
    pytest.param("redis-cluster", marks=pytest.mark.cluster),
]

Mutation = Callable[[bytes, bytes], bytes]


@st.composite
def mutations(draw: st.DrawFn) -> Mutation:
    """A change to an entry's bytes, given the entry and another valid entry to graft from.
    Positions wrap around the entry's length, so one strategy fits entries of any size."""
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "graft"]))
    at = draw(st.integers(0, 2**16))
    span = draw(st.integers(0, 64))
    mask = draw(st.integers(1, 255))
    noise = draw(st.binary(max_size=24))

    def mutate(data: bytes, other: bytes) -> bytes:
        i = at % len(data)
        if kind == "truncate":
            return data[:i]
        if kind == "flip":
            return data[:i] + bytes((data[i] ^ mask,)) + data[i + 1 :]
        if kind == "splice":
            return data[:i] + noise + data[i + span :]
        return data[:i] + other[i:]

    return mutate


def check(completion: Completion | None) -> Completion:
    """Everything a caller may touch on a completion works."""
    assert completion is not None
    assert completion.cache in (CacheStatus.HIT, CacheStatus.MISS)
    assert isinstance(completion.message, dict)
    assert completion.content is None or isinstance(completion.content, str)
    assert completion.finish_reason is None or isinstance(completion.finish_reason, str)
    assert isinstance(completion.model, str)
    assert completion.usage.total_tokens >= 0
    return completion


def tier_of(request: pytest.FixtureRequest, where: str) -> CacheBackend:
    """A fresh tier of kind ``where`` on its real server, under a prefix of its own."""
    if where == "memory":
        return MemoryCache()
    if where == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        return RedisCache.from_url(url, prefix=prefix, **PATIENT)
    if where == "redis-cluster":
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        prefix = request.getfixturevalue("cluster_prefix")
        return RedisCache.from_url(cluster.cache_url, prefix=prefix, **PATIENT)
    url = request.getfixturevalue("memcached_url")
    return MemcachedCache.from_url(
        url, prefix=request.getfixturevalue("memcached_prefix"), **PATIENT
    )


async def landed(tier: CacheBackend) -> None:
    """Every write of a remote tier sent (they go behind the call)."""
    if isinstance(tier, RedisCache | MemcachedCache):
        await tier.flush()


@pytest.mark.parametrize("where", WHERE)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(mutate=mutations(), stream=st.booleans(), signed=st.booleans())
async def test_a_mutated_entry_is_an_answer_or_an_upstream_call_never_an_error(
    gateway: FakeGateway,
    request: pytest.FixtureRequest,
    where: str,
    mutate: Mutation,
    stream: bool,
    signed: bool,
) -> None:
    tier = tier_of(request, where)
    cache = TieredCache(tier, hmac_key=HMAC_KEY if signed else None)
    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))], cache=cache) as client:
        # A streamed entry (its chunking too) and another to graft from, as stored.
        stored = client.stream(**ask(), cache="refresh")
        chunks = [chunk async for chunk in stored]
        other = await client.complete(**ask("another question"), cache="refresh")
        assert chunks and stored.completion is not None
        key, other_key = stored.completion.key, other.key
        assert key is not None and other_key is not None
        await landed(tier)
        data, other_data = await tier.get(key), await tier.get(other_key)
        assert data is not None and other_data is not None

        mutated = mutate(data, other_data)
        await tier.set(key, mutated, 60)
        await landed(tier)
        calls, corrupt = gateway.total_calls, client.stats.corrupt

        if stream:
            replay = client.stream(**ask())
            async for chunk in replay:
                assert isinstance(chunk.raw, dict) and isinstance(chunk.delta, dict)
                assert chunk.content is None or isinstance(chunk.content, str)
                assert chunk.reasoning is None or isinstance(chunk.reasoning, str)
                assert chunk.finish_reason is None or isinstance(chunk.finish_reason, str)
            completion = check(replay.completion)
        else:
            completion = check(await client.complete(**ask()))

        missed = completion.cache is CacheStatus.MISS
        assert gateway.total_calls - calls == int(missed)
        assert client.stats.corrupt - corrupt == int(missed)
        if signed and mutated != data:
            assert missed


@pytest.mark.parametrize("where", WHERE)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(mutate=mutations(), signed=st.booleans())
async def test_a_mutated_vector_is_its_inputs_own_or_a_counted_miss_never_another(
    gateway: FakeGateway,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    mutate: Mutation,
    signed: bool,
) -> None:
    keys: dict[str, str] = {}
    keyed = Embedder.keys

    def recorded(self: Embedder, model: str, texts: Any, *args: Any, **kwargs: Any) -> Any:
        made = keyed(self, model, texts, *args, **kwargs)
        keys.update(zip(texts, made, strict=True))
        return made

    monkeypatch.setattr(Embedder, "keys", recorded)
    tier = tier_of(request, where)
    cache = TieredCache(tier, hmac_key=HMAC_KEY if signed else None)
    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))], cache=cache) as client:
        # Two vectors as stored: one to change, one of the same size to graft from.
        await client.embed(model=VECTORS_MODEL, input=["a limpet", "a whelk"])
        await landed(tier)
        data, other = await tier.get(keys["a limpet"]), await tier.get(keys["a whelk"])
        assert data is not None and other is not None

        mutated = mutate(data, other)
        await tier.set(keys["a limpet"], mutated, 60)
        await landed(tier)
        sent, corrupt = gateway.embeddings.inputs, client.stats.corrupt

        e = await client.embed(model=VECTORS_MODEL, input=["a limpet"])
        assert e.vectors == [fake_vector(VECTORS_MODEL, "a limpet")]
        assert gateway.embeddings.inputs - sent == e.misses
        assert client.stats.corrupt - corrupt == e.misses
        if signed and mutated != data:
            assert e.misses == 1
