"""Flights under ``cache_scope="namespace"``: entries are shared across credentials,
flights are not, so a failure that depends on the credential sent (a 401 for a revoked
key) never reaches a caller that sent another. Under the default credential scope every
caller of a flight sends the same credentials, and shares its 401 with no extra call.

The gateway holds the first request upstream (``hold_answers``) until the other callers
are in place: a caller with a valid key must make its own call meanwhile (waited for
with ``wait_for_calls``, bounded), never join the revoked key's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from limpet import (
    CacheStatus,
    Client,
    Endpoint,
    FlightConfig,
    MemoryCache,
    RedisCache,
    RetryConfig,
    TieredCache,
)
from limpet.errors import AuthenticationError, EmbeddingBatchError
from limpet.pipeline.credentials import CacheScope
from limpet.testing import FakeGateway
from tests.integration.chat import MODEL, ask
from tests.redis_servers import eventually

GOOD = "sk-or-v1-valid-0123456789"
REVOKED = "sk-or-v1-revoked-9876543210"
FAST = FlightConfig(lease=0.3, poll=0.05)
SECRET = b"fleet secret"
# Bounds the wait for an upstream call that must come; it fails the test, never paces it.
PATIENCE = 5.0


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_client(
    gateway: FakeGateway,
    *,
    api_key: str,
    cache_scope: CacheScope,
    redis: tuple[str, str] | None = None,
) -> Client:
    """A Client with an in-process cache, and with ``redis`` (URL, prefix) a shared tier
    of its own connection, as another process's."""
    cache = (
        TieredCache(MemoryCache())
        if redis is None
        else TieredCache(
            MemoryCache(),
            RedisCache.from_url(redis[0], prefix=redis[1], hmac_key=SECRET),
            hmac_key=SECRET,
        )
    )
    return Client(
        endpoints=[Endpoint("a", gateway.base_url("a"), api_key=api_key)],
        cache=cache,
        cache_scope=cache_scope,
        flight=FAST,
        retry=RetryConfig(max_attempts=1),
    )


async def calls_reach(
    gateway: FakeGateway, count: int, *tasks: asyncio.Future[Any], embeds: bool = False
) -> None:
    """Return once ``count`` requests came upstream; else fail, with what ``tasks`` (the
    callers that should have made one) got instead."""
    try:
        async with asyncio.timeout(PATIENCE):
            if embeds:
                await gateway.embeddings.wait_for_requests(count)
            else:
                await gateway.endpoint("a").wait_for_calls(count)
    except TimeoutError:
        gateway.endpoint("a").release_answers()
        got = await asyncio.gather(*tasks, return_exceptions=True)
        raise AssertionError(f"no upstream request #{count}; its callers got {got}") from None


def statuses(results: list[Any]) -> list[Any]:
    return [type(r).__name__ if isinstance(r, BaseException) else r.cache for r in results]


@pytest.mark.gateway(api_key=GOOD)
async def test_a_revoked_keys_401_never_reaches_a_call_with_a_valid_key_in_process(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    async with make_client(gateway, api_key=GOOD, cache_scope="namespace") as client:
        ep.hold_answers()
        revoked = asyncio.create_task(client.complete(**ask(), extra_headers=bearer(REVOKED)))
        await calls_reach(gateway, 1)
        valid = [
            asyncio.create_task(client.complete(**ask(), extra_headers=bearer(GOOD)))
            for _ in range(3)
        ]
        # The valid key's own flight, not the revoked one's.
        await calls_reach(gateway, 2, revoked, *valid)
        ep.release_answers()
        with pytest.raises(AuthenticationError):
            await revoked
        results = await asyncio.gather(*valid, return_exceptions=True)
        assert sorted(statuses(results)) == sorted(["miss", "coalesced", "coalesced"])
        # The entry is still the namespace's: the revoked key's next call is a hit.
        hit = await client.complete(**ask(), extra_headers=bearer(REVOKED))
    assert hit.cache is CacheStatus.HIT
    assert ep.calls == 2


@pytest.mark.redis
@pytest.mark.gateway(api_key=GOOD)
async def test_a_revoked_keys_signed_401_never_reaches_another_process_with_a_valid_key(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    ep = gateway.endpoint("a")
    shared = (redis_url, redis_prefix)
    async with (
        make_client(gateway, api_key=REVOKED, cache_scope="namespace", redis=shared) as a,
        make_client(gateway, api_key=GOOD, cache_scope="namespace", redis=shared) as b,
    ):
        ep.hold_answers()
        revoked = asyncio.create_task(a.complete(**ask()))
        await calls_reach(gateway, 1)
        valid = [asyncio.create_task(b.complete(**ask())) for _ in range(3)]
        flight = b._chat.shared_flight
        assert flight is not None

        async def b_follows() -> bool:
            return flight.lease_checks >= 1

        # b follows a's lease (the entry is the namespace's); a's 401 ends a's flight
        # without being b's: b takes it over, and calls with its own key.
        await eventually(b_follows, what="b following a's flight")
        ep.release_answers()
        with pytest.raises(AuthenticationError):
            await revoked
        results = await asyncio.gather(*valid, return_exceptions=True)
        assert sorted(statuses(results)) == sorted(["miss", "coalesced", "coalesced"])
        assert flight.takeovers == 1
    assert ep.calls == 2


@pytest.mark.gateway(api_key=GOOD)
async def test_a_revoked_keys_stream_never_fails_a_stream_with_a_valid_key(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    async with make_client(gateway, api_key=GOOD, cache_scope="namespace") as client:

        async def read(key: str) -> str:
            stream = client.stream(**ask(), extra_headers=bearer(key))
            async with stream:
                async for _ in stream:
                    pass
            assert stream.completion is not None
            return stream.completion.cache.value

        ep.hold_answers()
        revoked = asyncio.create_task(read(REVOKED))
        await calls_reach(gateway, 1)
        valid = asyncio.create_task(read(GOOD))
        answered = asyncio.create_task(client.complete(**ask(), extra_headers=bearer(GOOD)))
        await calls_reach(gateway, 2, revoked, valid, answered)
        ep.release_answers()
        with pytest.raises(AuthenticationError):
            await revoked
        assert await valid == "miss"
        assert (await answered).cache is CacheStatus.COALESCED
    assert ep.calls == 2


async def test_an_embed_failure_of_one_key_never_reaches_a_call_with_another(
    gateway: FakeGateway,
) -> None:
    # The gateway refuses the first request (as it would a revoked key's): the input's
    # other caller sent another key, and gets its vector from a request of its own.
    ep, embeddings = gateway.endpoint("a"), gateway.embeddings
    ep.fail(401, message="User not found.")
    async with make_client(gateway, api_key=GOOD, cache_scope="namespace") as client:
        ep.hold_answers()
        revoked = asyncio.create_task(
            client.embed(model=MODEL, input=["x"], extra_headers=bearer(REVOKED))
        )
        await calls_reach(gateway, 1, revoked, embeds=True)
        valid = asyncio.create_task(
            client.embed(model=MODEL, input=["x"], extra_headers=bearer(GOOD))
        )
        await calls_reach(gateway, 2, revoked, valid, embeds=True)
        ep.release_answers()
        with pytest.raises((AuthenticationError, EmbeddingBatchError)):
            await revoked
        assert len((await valid).vectors) == 1
    assert embeddings.calls == 2


@pytest.mark.redis
@pytest.mark.gateway(api_key=GOOD)
async def test_a_credential_scoped_flight_shares_its_401_without_another_call(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    ep = gateway.endpoint("a")
    shared = (redis_url, redis_prefix)
    async with (
        make_client(gateway, api_key=REVOKED, cache_scope="credential", redis=shared) as a,
        make_client(gateway, api_key=REVOKED, cache_scope="credential", redis=shared) as b,
    ):
        ep.hold_answers()
        leading = [asyncio.create_task(a.complete(**ask())) for _ in range(3)]
        await calls_reach(gateway, 1)
        following = [asyncio.create_task(b.complete(**ask())) for _ in range(3)]
        flight = b._chat.shared_flight
        assert flight is not None

        async def b_follows() -> bool:
            return flight.lease_checks >= 1

        await eventually(b_follows, what="b following a's flight")
        ep.release_answers()
        results = await asyncio.gather(*leading, *following, return_exceptions=True)
    assert all(isinstance(r, AuthenticationError) for r in results), results
    assert ep.calls == 1


@pytest.mark.redis
async def test_an_embed_failure_of_one_key_never_reaches_another_process(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    # As above, across processes: b follows a's lease of the input; a's 401 is not b's.
    ep, embeddings = gateway.endpoint("a"), gateway.embeddings
    ep.fail(401, message="User not found.")
    shared = (redis_url, redis_prefix)
    async with (
        make_client(gateway, api_key=REVOKED, cache_scope="namespace", redis=shared) as a,
        make_client(gateway, api_key=GOOD, cache_scope="namespace", redis=shared) as b,
    ):
        ep.hold_answers()
        revoked = asyncio.create_task(a.embed(model=MODEL, input=["x"]))
        await calls_reach(gateway, 1, revoked, embeds=True)
        valid = asyncio.create_task(b.embed(model=MODEL, input=["x"]))
        flight = b._pipelines.embeds.embedder._shared
        assert flight is not None

        async def b_follows() -> bool:
            return flight.lease_checks >= 1

        await eventually(b_follows, what="b following a's input")
        ep.release_answers()
        with pytest.raises((AuthenticationError, EmbeddingBatchError)):
            await revoked
        assert len((await valid).vectors) == 1
    assert embeddings.calls == 2
