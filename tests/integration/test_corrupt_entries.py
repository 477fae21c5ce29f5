"""A misplaced, truncated, forged or ill-shaped entry is a counted corrupt miss on every
path (complete, stream replay, the cross-process follower's replay, warm): it is deleted
and the call goes upstream; it is never an answer and never an exception.

Real Redis (``redis_prefix``) and the FakeGateway over loopback; counts, never times.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import orjson
import pytest
import redis.asyncio
from aiohttp import web

from limpet import CacheStatus, Client, Endpoint, MemoryCache, RedisCache, TieredCache
from limpet.cache.base import CacheEntry, EntryCodec
from limpet.cache.redis.leases import RedisFlightStore
from limpet.flight.store import FlightNotice, FlightOutcome
from limpet.http.chunks import StreamChunk
from limpet.models import Usage
from limpet.pipeline.stream import CompletionStream
from limpet.testing import FakeGateway
from tests.integration.chat import MODEL, ask
from tests.integration.scripted import chunk, completion
from tests.loopback import served
from tests.redis_servers import eventually

# For tests about what is stored, not about Redis's speed: a loaded machine must not turn
# them into timeout tests.
PATIENT: dict[str, Any] = {"read_timeout": 1.0, "write_timeout": 1.0}
HMAC_KEY = b"fleet-secret"


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def redis_client(
    gateway: FakeGateway,
    redis_url: str,
    redis_prefix: str,
    *,
    hmac_key: bytes | None = None,
    namespace: str = "",
) -> Client:
    """A Client on a Redis tier alone, so that every read reaches what is in Redis."""
    rc = RedisCache.from_url(redis_url, prefix=redis_prefix, **PATIENT)
    return Client(
        endpoints=[Endpoint("a", gateway.base_url("a"))],
        cache=TieredCache(rc, hmac_key=hmac_key),
        namespace=namespace,
    )


def tiers(client: Client) -> TieredCache:
    assert client.cache is not None
    return client.cache


async def landed(client: Client) -> None:
    for tier in tiers(client).tiers:
        if isinstance(tier, RedisCache):
            await tier.flush()


async def collect(stream: CompletionStream) -> list[StreamChunk]:
    return [chunk async for chunk in stream]


def text(chunks: list[StreamChunk]) -> str:
    return "".join(chunk.content or "" for chunk in chunks)


# -- Misplaced entries ------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("hmac_key", [HMAC_KEY, None], ids=["signed", "unsigned"])
async def test_an_entry_copied_to_another_requests_key_is_a_corrupt_miss(
    gateway: FakeGateway,
    redis_url: str,
    redis_prefix: str,
    raw: redis.asyncio.Redis,
    hmac_key: bytes | None,
) -> None:
    async with redis_client(gateway, redis_url, redis_prefix, hmac_key=hmac_key) as client:
        one = await client.complete(**ask("one"))
        two = await client.complete(**ask("two"))
        await landed(client)
        assert one.key is not None and two.key is not None and one.content != two.content
        rc = tiers(client).tiers[0]
        assert isinstance(rc, RedisCache)
        assert await raw.copy(rc.redis_key(one.key), rc.redis_key(two.key), replace=True)

        # The tier itself: a counted corrupt miss, and the entry is gone.
        assert await tiers(client).get(two.key) is None
        assert tiers(client).stats.corrupt == 1
        assert await raw.exists(rc.redis_key(two.key)) == 0

        assert await raw.copy(rc.redis_key(one.key), rc.redis_key(two.key), replace=True)
        again = await client.complete(**ask("two"))
        assert again.cache is CacheStatus.MISS
        assert again.content == two.content
        assert gateway.total_calls == 3
        assert client.stats.corrupt == 2
        await landed(client)
        assert (await client.complete(**ask("two"))).cache is CacheStatus.HIT


@pytest.mark.redis
@pytest.mark.parametrize("hmac_key", [HMAC_KEY, None], ids=["signed", "unsigned"])
async def test_an_entry_copied_to_another_namespace_is_a_corrupt_miss(
    gateway: FakeGateway,
    redis_url: str,
    redis_prefix: str,
    raw: redis.asyncio.Redis,
    hmac_key: bytes | None,
) -> None:
    async with (
        redis_client(gateway, redis_url, redis_prefix, hmac_key=hmac_key, namespace="x") as x,
        redis_client(gateway, redis_url, redis_prefix, hmac_key=hmac_key, namespace="y") as y,
    ):
        mine = await x.complete(**ask())
        theirs = await y.complete(**ask())
        await landed(x)
        await landed(y)
        assert mine.key is not None and theirs.key is not None and mine.key != theirs.key
        rc = tiers(x).tiers[0]
        assert isinstance(rc, RedisCache)
        assert await raw.copy(rc.redis_key(mine.key), rc.redis_key(theirs.key), replace=True)
        assert (await y.complete(**ask())).cache is CacheStatus.MISS
        assert y.stats.corrupt == 1
        assert gateway.total_calls == 3


# -- Truncated and ill-shaped entries ------------------------------------------------------


@pytest.mark.redis
async def test_a_truncated_streamed_entry_is_a_corrupt_miss_then_replaced(
    gateway: FakeGateway, redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    async with redis_client(gateway, redis_url, redis_prefix) as client:
        first = client.stream(**ask())
        live = await collect(first)
        await landed(client)
        assert first.completion is not None and first.completion.key is not None
        rc = tiers(client).tiers[0]
        assert isinstance(rc, RedisCache)
        full = rc.redis_key(first.completion.key)
        data = await raw.get(full)
        assert data is not None
        await raw.set(full, data[:-7], px=60_000)

        again = client.stream(**ask())
        assert text(await collect(again)) == text(live)
        assert again.completion is not None and again.completion.cache is CacheStatus.MISS
        assert client.stats.corrupt == 1
        assert gateway.total_calls == 2
        await landed(client)
        replay = client.stream(**ask())
        assert text(await collect(replay)) == text(live)
        assert replay.completion is not None and replay.completion.cache is CacheStatus.HIT
        assert gateway.total_calls == 2


def planted(key: str, body: dict[str, Any], stream: bytes | None = None) -> bytes:
    """Entry bytes as a writer with no HMAC key would store them: well-bound, lengths
    right, whatever is inside."""
    now = 1e10  # far in the future: never expired
    entry = CacheEntry(body, Usage(1, 1), None, "a", now - 1, now, stream)
    return EntryCodec().encode(key, entry)


ANSWER = {"model": MODEL, "choices": [{"message": {"role": "assistant", "content": "planted"}}]}
ILL_SHAPED: list[dict[str, Any]] = [
    {"model": MODEL},
    {"model": MODEL, "choices": []},
    {"model": MODEL, "choices": [{"message": "planted"}]},
    {"model": MODEL, "choices": [{"text": "planted"}]},
]


async def key_of(client: Client, request: dict[str, Any]) -> str:
    key = (await client.complete(**request, cache="refresh")).key
    assert key is not None
    return key


def forged_checksum(key: str) -> bytes:
    """Entry bytes whose header says servable and whose checksum is right, over a cut
    body (once a hit whose first use raised ``CacheCorruptError``, for every caller)."""
    payload = planted(key, ANSWER)[8:].replace(b'"planted"', b'"planted!')
    return planted(key, ANSWER)[:4] + zlib.crc32(payload).to_bytes(4, "little") + payload


@pytest.mark.parametrize(
    "plant",
    [*(partial(planted, body=body) for body in ILL_SHAPED), forged_checksum],
    ids=["no-choices", "empty", "str-message", "text", "forged-checksum"],
)
@pytest.mark.parametrize("path", ["complete", "stream", "warm"])
async def test_an_ill_shaped_entry_is_a_corrupt_miss_on_every_path(
    gateway: FakeGateway, plant: Callable[[str], bytes], path: str
) -> None:
    memory = MemoryCache()
    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))], cache=memory) as client:
        key = await key_of(client, ask())
        await memory.set(key, plant(key), 60)
        if path == "complete":
            completion = await client.complete(**ask())
            assert completion.cache is CacheStatus.MISS and completion.content
        elif path == "stream":
            stream = client.stream(**ask())
            assert text(await collect(stream))
            assert stream.completion is not None and stream.completion.cache is CacheStatus.MISS
        else:
            report = await client.warm([ask()])
            assert (report.warmed, report.skipped, report.failed) == (1, 0, 0)
        assert client.stats.corrupt == 1
        assert gateway.total_calls == 2
        assert (await client.complete(**ask())).cache is CacheStatus.HIT


@pytest.mark.parametrize(
    "chunking",
    [b'{"envelope": {}, "chunks": [{"choices": [', b"[]", b'{"envelope": {}, "chunks": [5]}'],
    ids=["truncated", "list", "not-chunks"],
)
async def test_a_stored_stream_that_does_not_replay_is_a_corrupt_miss(
    gateway: FakeGateway, chunking: bytes
) -> None:
    memory = MemoryCache()
    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))], cache=memory) as client:
        key = await key_of(client, ask())
        await memory.set(key, planted(key, ANSWER, chunking), 60)
        stream = client.stream(**ask())
        chunks = await collect(stream)
        assert text(chunks) and text(chunks) != "planted"
        assert stream.completion is not None and stream.completion.cache is CacheStatus.MISS
        assert client.stats.corrupt == 1
        assert gateway.total_calls == 2
        # Deleted, and replaced by the fresh answer.
        assert (await client.complete(**ask())).content == text(chunks)


@contextlib.asynccontextmanager
async def led_elsewhere(
    client: Client, redis_url: str, redis_prefix: str
) -> AsyncIterator[tuple[str, RedisFlightStore]]:
    """Another process leads the flight of ``ask()`` (its lease taken, nothing stored):
    the key, and that process's flight store, to release the lease with."""
    key = await key_of(client, ask())
    await tiers(client).delete(key)
    leader = RedisCache.from_url(redis_url, prefix=redis_prefix, **PATIENT)
    try:
        store = leader.flight_store
        assert await store.acquire(key, "leader", 30.0)
        yield key, store
    finally:
        await leader.aclose()


async def following(client: Client, key: str, what: str) -> None:
    """Returns once ``client`` follows the other process's flight of ``key``."""
    rc = tiers(client).tiers[0]
    assert isinstance(rc, RedisCache)

    async def watching() -> bool:
        return key in rc.flight_store._watches

    await eventually(watching, what=what)


@pytest.mark.redis
async def test_a_follower_whose_leaders_entry_does_not_replay_streams_upstream(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    async with (
        redis_client(gateway, redis_url, redis_prefix) as client,
        led_elsewhere(client, redis_url, redis_prefix) as (key, store),
    ):
        follower = asyncio.create_task(collect(client.stream(**ask())))
        await following(client, key, "the client follows the other process")
        bad = planted(key, ANSWER, b'{"envelope": {}, "chunks": [{"choices": [')
        await store.release(key, "leader", FlightNotice(FlightOutcome.STORED), bad, 60.0)
        chunks = await follower
        assert text(chunks) and text(chunks) != "planted"
        assert client.stats.corrupt == 1
        assert gateway.total_calls == 2


@pytest.mark.redis
async def test_a_stream_joined_to_a_complete_whose_answer_does_not_replay_streams_upstream(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    """A ``complete()`` follows another process's flight and a ``stream()`` of the same
    request joins it: the entry the leader stored has a stream that does not replay. The
    stream must count it corrupt and stream afresh, never fail with the cache's fault."""
    async with (
        redis_client(gateway, redis_url, redis_prefix) as client,
        led_elsewhere(client, redis_url, redis_prefix) as (key, store),
    ):
        completed = asyncio.create_task(client.complete(**ask()))
        await following(client, key, "the complete() follows the other process")
        stream = client.stream(**ask())
        streamed = asyncio.create_task(collect(stream))
        flight = client._chat._flight  # complete()'s flights in this process
        assert flight is not None

        async def joined() -> bool:  # the complete() and the stream wait on it
            running = flight._flights.get(key)
            return running is not None and len(running.waiters) == 2

        await eventually(joined, what="the stream joins the complete()'s flight")
        bad = planted(key, ANSWER, b'{"envelope": {}, "chunks": [{"choices": [null]}]}')
        await store.release(key, "leader", FlightNotice(FlightOutcome.STORED), bad, 60.0)
        completion = await completed
        chunks = await streamed
        assert completion.cache is CacheStatus.COALESCED and completion.content == "planted"
        assert text(chunks) and text(chunks) != "planted"
        assert stream.completion is not None and stream.completion.cache is CacheStatus.MISS
        assert client.stats.corrupt == 1
        assert gateway.total_calls == 2


# -- Entries written by an older limpet ---------------------------------------------------


async def test_an_entry_of_the_previous_format_is_never_served(gateway: FakeGateway) -> None:
    memory = MemoryCache()
    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))], cache=memory) as client:
        key = await key_of(client, ask())
        data = planted(key, ANSWER)
        await memory.set(key, data[:2] + bytes((data[2] - 1,)) + data[3:], 60)
        assert (await client.complete(**ask())).content != "planted"
        assert client.stats.corrupt == 1


# -- Answers served to their caller but never stored ---------------------------------------


async def test_a_stream_joined_to_an_unservable_complete_streams_upstream() -> None:
    """A ``complete()`` answered with a body no hit could be served from (a choice whose
    tool calls are not objects: given to its caller as it came, never stored) is not
    replayed to a ``stream()`` of the same request that joined its flight: the stream
    goes upstream itself, rather than fail replaying it."""
    arrived, answer = asyncio.Event(), asyncio.Event()
    odd = completion()
    odd["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": [None]}
    streamed_chunks = [chunk({"role": "assistant", "content": "ok"}), chunk({}, "stop")]

    async def upstream(request: web.Request) -> web.StreamResponse:
        if not (await request.json()).get("stream"):
            arrived.set()
            await answer.wait()
            return web.json_response(odd)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in streamed_chunks:
            await response.write(b"data: " + orjson.dumps(piece) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream)
    async with served(app) as url, Client(endpoints=[Endpoint("a", url + "/v1")]) as client:
        completed = asyncio.create_task(client.complete(**ask()))
        await arrived.wait()
        stream = client.stream(**ask())
        streamed = asyncio.create_task(collect(stream))
        flight = client._chat._flight
        assert flight is not None

        async def joined() -> bool:  # the complete() and the stream wait on its flight
            return any(len(running.waiters) == 2 for running in flight._flights.values())

        await eventually(joined, what="the stream joins the complete()'s flight")
        answer.set()
        assert (await completed).raw["choices"][0]["message"]["tool_calls"] == [None]
        assert text(await streamed) == "ok"
        assert stream.completion is not None and stream.completion.cache is CacheStatus.MISS
