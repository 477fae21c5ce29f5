"""Whatever happens to a stored entry's bytes (truncated, bits flipped, spliced, grafted
onto another entry), ``complete()`` and ``stream()`` give a well-formed completion (a hit)
or call upstream (a counted corrupt miss), never an exception. In a Memory tier and in
Redis, signed and unsigned; a signed entry that was changed at all is never a hit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from limpet import CacheStatus, Client, Completion, Endpoint, MemoryCache, RedisCache, TieredCache
from limpet.testing import FakeGateway
from tests.integration.chat import ask

# For tests about what is stored, not about Redis's speed: a loaded machine must not turn
# them into timeout tests.
PATIENT: dict[str, Any] = {"read_timeout": 1.0, "write_timeout": 1.0}
HMAC_KEY = b"fleet-secret"

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


@pytest.mark.redis
@pytest.mark.parametrize("where", ["memory", "redis"])
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(mutate=mutations(), stream=st.booleans(), signed=st.booleans())
async def test_a_mutated_entry_is_an_answer_or_an_upstream_call_never_an_error(
    gateway: FakeGateway,
    redis_url: str,
    redis_prefix: str,
    where: str,
    mutate: Mutation,
    stream: bool,
    signed: bool,
) -> None:
    hmac_key = HMAC_KEY if signed else None
    rc = RedisCache.from_url(redis_url, prefix=redis_prefix, **PATIENT)
    memory = MemoryCache()
    tier = memory if where == "memory" else rc
    raw = redis.asyncio.Redis.from_url(redis_url)
    client = Client(
        endpoints=[Endpoint("a", gateway.base_url("a"))],
        cache=TieredCache(tier, hmac_key=hmac_key),
    )
    try:
        # A streamed entry (its chunking too) and another to graft from, as stored.
        stored = client.stream(**ask(), cache="refresh")
        chunks = [chunk async for chunk in stored]
        other = await client.complete(**ask("another question"), cache="refresh")
        assert chunks and stored.completion is not None
        key, other_key = stored.completion.key, other.key
        assert key is not None and other_key is not None
        await rc.flush()
        data, other_data = await tier.get(key), await tier.get(other_key)
        assert data is not None and other_data is not None

        mutated = mutate(data, other_data)
        if where == "memory":
            await memory.set(key, mutated, 60)
        else:
            await raw.set(rc.redis_key(key), mutated, px=60_000)
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
    finally:
        await client.aclose()
        await raw.aclose()
