"""The machinery of the cancellation sweep (``test_cancel_sweep.py``): the tier setups its
Clients use, what the FakeGateway answered per prompt, the leases asked for, and the
checks made once a cancelled call and everything it left running have ended.

A ``Sweep`` is one test's world: its gateway, its Clients (each over its own memory tier,
and, but for ``"memory"``, a handle of its own on one shared Redis or Memcached), and what
it records meanwhile. ``sweep()`` runs a round for k = 0, 1, 2, ... until the call to be
cancelled finished before its k turns were up. Nothing here waits on a clock:
``asyncio.timeout`` only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import pytest
import redis.asyncio

from limpet import (
    CacheStatus,
    Client,
    Completion,
    Embeddings,
    Endpoint,
    FlightConfig,
    MemcachedCache,
    MemoryCache,
    RedisCache,
    TieredCache,
)
from limpet.cache.memcached.leases import MemcachedFlightStore
from limpet.cache.redis.leases import RedisFlightStore
from limpet.cache.remote import RemoteCache
from limpet.http.chunks import StreamChunk
from limpet.testing import FakeGateway
from limpet.testing.embeddings import fake_vector
from limpet.testing.endpoint import FakeEndpoint
from limpet.testing.wire import Answer
from tests.cluster_servers import RedisClusterServers
from tests.integration.chat import ask
from tests.integration.soak_adversity import landed
from tests.integration.test_lifecycle import limpet_tasks

TierName = Literal["memory", "redis", "memcached", "redis-cluster"]
# The tier setups, for ``pytest.mark.parametrize("world", TIERS, indirect=True)``.
TIERS = [
    pytest.param("memory"),
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("memcached", marks=pytest.mark.memcached),
]
SHARED_TIERS = TIERS[1:]
# The same on the session's three-node Redis Cluster too (the storms).
TIERS_AND_CLUSTER = [*TIERS, pytest.param("redis-cluster", marks=pytest.mark.redis)]
SharedTier = RedisCache | MemcachedCache

# Leases, follower waits and failure guards far longer than a round takes: only what a
# round does ends a wait. A follower polls often, so that Memcached's rounds are quick.
LONG = 30.0
FLIGHT = FlightConfig(lease=LONG, poll=0.01, follow_timeout=LONG)
# A sweep whose call has not finished within this many turns fails rather than spins.
MAX_ROUNDS = 5_000
EMBED_MODEL = "openai/text-embedding-3-small"
# Tasks a Client with a Redis tier keeps by design, not left behind by a call, which its
# aclose() ends: the fleet counters' batch timer (while counts wait to be sent), and the
# flight notices' subscription (once a follower has watched for a notice).
STANDING = frozenset({"FleetCounters._flush_later", "RedisFlightStore._read"})


async def turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def cancel_after(task: asyncio.Task[Any], k: int) -> bool:
    """``k`` event-loop turns, then ``task.cancel()``; True when it had finished first."""
    await turns(k)
    if task.done():
        return True
    task.cancel()
    return False


async def ended(*tasks: asyncio.Task[Any]) -> None:
    async with asyncio.timeout(LONG):
        await asyncio.wait(tasks)


async def sweep(play: Callable[[int], Awaitable[bool]]) -> int:
    """``play(k)`` for k = 0, 1, 2, ... until it says its call finished before being
    cancelled; returns how many rounds that took."""
    for k in range(MAX_ROUNDS):
        try:
            if await play(k):
                return k + 1
        except AssertionError as exc:
            exc.add_note(f"in the round cancelling after k={k} turns")
            raise
    raise AssertionError(f"the call never finished within {MAX_ROUNDS} turns")


async def commands_ended(tier: MemcachedCache) -> None:
    """Returns once no Memcached command of ``tier`` is running: one whose caller was
    cancelled goes on until it has read its reply (``MemcachedConnector.running``)."""
    while running := tier._connector.running:
        await asyncio.wait(running)


async def sweep_until(
    world: Sweep, play: Callable[[int, int], Awaitable[bool]], *states: str, passes: int = 3
) -> None:
    """``sweep`` with ``play(n, k)`` for pass n = 0, and again for n = 1, 2... (at most
    ``passes``) while any of ``states`` was never reached; then they must all have been.
    For states that hang on a server's timing (Memcached's followers poll on a clock), a
    pass on a busy machine may miss one; ``play`` uses prompts of its own in each pass."""
    for n in range(passes):
        world.rounds += await sweep(functools.partial(play, n))
        if all(world.reached[state] for state in states):
            break
    world.reached_all(*states)


def prompt_of(message: dict[str, Any] | Any) -> str:
    return str(message["messages"][-1]["content"])


@dataclass
class Tally:
    """The counters of ``Client.stats`` a round moves."""

    hits: int = 0
    misses: int = 0
    coalesced: int = 0
    bypassed: int = 0
    errors: int = 0
    upstream_calls: int = 0
    embedding_hits: int = 0
    embedding_misses: int = 0
    embedding_coalesced: int = 0
    embedding_requests: int = 0
    prompt_tokens: int = 0

    @classmethod
    def of(cls, client: Client) -> Tally:
        return cls(**{f.name: getattr(client.stats, f.name) for f in fields(cls)})

    def __sub__(self, other: Tally) -> Tally:
        return Tally(
            **{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)}
        )

    def saw(self, result: Completion | Embeddings) -> None:
        """Count what a caller was given, as ``Client.stats`` should have."""
        if isinstance(result, Embeddings):
            self.embedding_hits += result.hits
            self.embedding_misses += result.misses
            self.embedding_coalesced += result.coalesced
            self.prompt_tokens += result.usage.prompt_tokens
            return
        if result.cache in (CacheStatus.MISS, CacheStatus.BYPASS):
            self.prompt_tokens += result.usage.prompt_tokens
        name = {
            CacheStatus.HIT: "hits",
            CacheStatus.MISS: "misses",
            CacheStatus.COALESCED: "coalesced",
            CacheStatus.BYPASS: "bypassed",
        }[result.cache]
        setattr(self, name, getattr(self, name) + 1)


class Counts:
    """Each Client's counters before a round, and what its callers were given since."""

    def __init__(self, sweep: Sweep, clients: Iterable[Client]) -> None:
        self.clients = list(clients)
        self.before = [Tally.of(client) for client in self.clients]
        self.seen = [Tally() for _ in self.clients]
        self.gateway = sweep.gateway
        self.embedding_requests = sweep.gateway.embeddings.calls

    def saw(self, client: Client, result: Completion | Embeddings) -> None:
        self.seen[self.clients.index(client)].saw(result)

    def check(self, *, requests: int, cancelled: int) -> None:
        """Each Client counted what its callers were given, and no error; upstream, the
        ``requests`` chat requests the gateway read (and up to one more per cancelled
        caller: counted, then cut short before it got there), every embedding request."""
        upstream = embedded = 0
        for client, before, seen in zip(self.clients, self.before, self.seen, strict=True):
            moved = Tally.of(client) - before
            upstream += moved.upstream_calls
            embedded += moved.embedding_requests
            moved.upstream_calls = moved.embedding_requests = 0
            # Every answer its callers got as their own was paid for, and counted; so
            # may be one a caller left with nobody of its Client to take it.
            assert moved.prompt_tokens >= seen.prompt_tokens
            moved.prompt_tokens = seen.prompt_tokens = 0
            assert moved == seen
        assert requests <= upstream <= requests + cancelled
        assert embedded == self.gateway.embeddings.calls - self.embedding_requests


@dataclass
class Sweep:
    """One test's gateway, Clients and shared tier, and what they did."""

    gateway: FakeGateway
    tier: TierName
    caplog: pytest.LogCaptureFixture
    shared: Callable[[], SharedTier] | None = None  # a new handle on the shared tier
    inspector: SharedTier | None = None  # the test's own handle, to look for leases
    admins: tuple[redis.asyncio.Redis, ...] = ()  # Redis only (each node): to list leases
    answers: dict[str, list[Answer]] = field(default_factory=lambda: collections.defaultdict(list))
    leased: set[str] = field(default_factory=set)  # keys whose lease was asked for
    clients: list[Client] = field(default_factory=list)
    # The most chat requests the design allows per prompt: a request a cancelled caller
    # had written may be read by the gateway after the round, so this is checked again
    # once the gateway has closed (``close()``).
    allowed: dict[str, int] = field(default_factory=dict)
    # The states the rounds left their calls in, by name, counted: a sweep checks that
    # it reached those it is there for (not only that the call ended sooner or later).
    reached: collections.Counter[str] = field(default_factory=collections.Counter)
    rounds: int = 0

    @property
    def endpoint(self) -> FakeEndpoint:
        return self.gateway.endpoint("a")

    def client(self) -> Client:
        shared = self.shared
        cache = MemoryCache() if shared is None else TieredCache(MemoryCache(), shared())
        client = Client(
            endpoints=[Endpoint("a", self.gateway.base_url("a"))], cache=cache, flight=FLIGHT
        )
        self.clients.append(client)
        return client

    # -- what the gateway saw and said ----------------------------------------------------

    def requests(self, prompt: str) -> int:
        """Chat requests the gateway read for ``prompt``."""
        return sum(1 for body in self.endpoint.requests if prompt_of(body) == prompt)

    def embedded(self) -> list[str]:
        """Every input the gateway was sent for embedding, in order."""
        return [text for body in self.gateway.embeddings.requests for text in body["input"]]

    def answered(self, prompt: str, completion: Completion) -> Answer:
        """The answer the gateway produced for ``prompt`` that ``completion`` is, checked
        to be it exactly; every answer to one prompt says the same."""
        answers = self.answers[prompt]
        assert len({answer.content for answer in answers}) == 1, "the gateway is deterministic"
        found = [answer for answer in answers if answer.id == completion.raw.get("id")]
        assert len(found) == 1, f"{completion.raw.get('id')} is no answer to {prompt!r}"
        answer = found[0]
        assert completion.content == answer.content
        assert completion.usage.completion_tokens == answer.usage["completion_tokens"]
        return answer

    def streamed(self, prompt: str, chunks: list[StreamChunk], *, whole: bool) -> Answer | None:
        """The answer ``chunks`` come from, checked to be its chunks from the first, whole
        up to the usage chunk when ``whole``; None for no chunk at all."""
        if not chunks:
            assert not whole
            return None
        ids = {chunk.raw.get("id") for chunk in chunks}
        assert len(ids) == 1, f"chunks of several answers: {ids}"
        found = [answer for answer in self.answers[prompt] if answer.id in ids]
        assert len(found) == 1, f"{ids} is no answer to {prompt!r}"
        text = "".join(chunk.content or "" for chunk in chunks)
        if whole:
            assert text == found[0].content
            assert chunks[-1].index is None, "the usage chunk comes last"
        else:
            assert found[0].content.startswith(text)
        return found[0]

    def vectors_right(self, texts: list[str], result: Embeddings) -> None:
        assert result.vectors == [fake_vector(EMBED_MODEL, text) for text in texts]

    # -- what is left behind --------------------------------------------------------------

    async def settle(self) -> None:
        """Wait until every Client's background work of the round has ended: its shared
        calls (``landed``), then its writes behind, then the Memcached commands their
        callers left (each reads its reply to the end: ``commands_ended``)."""
        async with asyncio.timeout(LONG):
            for client in self.clients:
                await landed(client)
            for client in self.clients:
                assert client.cache is not None
                for tier in client.cache.tiers:
                    if isinstance(tier, RemoteCache):
                        await tier.flush()
                    if isinstance(tier, MemcachedCache):
                        await commands_ended(tier)

    async def stray_leases(self) -> list[str]:
        """Leases held now: of the keys asked for this round (or, on Redis, any at all)."""
        inspector = self.inspector
        if inspector is None:
            return []
        store = inspector.flight_store
        held = [key for key in sorted(self.leased) if await store.holder(key) is not None]
        for admin in self.admins:
            assert isinstance(inspector, RedisCache)
            pattern = inspector.lock_key("*")
            held += [key.decode() async for key in admin.scan_iter(match=pattern)]
        return held

    async def stored(self, client: Client, key: str) -> bool:
        """Whether any tier of ``client`` holds ``key`` (read behind its back: no stats)."""
        assert client.cache is not None
        return any([await tier.get(key) is not None for tier in client.cache.tiers])

    def bad_logs(self) -> list[str]:
        """Errors, and warnings of limpet's or asyncio's, logged so far."""
        return [
            f"{r.name} {r.levelname}: {r.getMessage()}"
            for r in self.caplog.records
            if r.levelno >= logging.ERROR
            or (r.levelno >= logging.WARNING and r.name.split(".")[0] in ("limpet", "asyncio"))
            or "never retrieved" in r.getMessage()
            or "Task was destroyed" in r.getMessage()
        ]

    async def nothing_left(self) -> None:
        """Once the round's background work has ended: no lease held, no limpet task
        running (but those ``STANDING``), nothing logged amiss."""
        await self.settle()
        assert await self.stray_leases() == []
        left = [
            t for t in limpet_tasks() if getattr(t.get_coro(), "__qualname__", "") not in STANDING
        ]
        assert left == []
        assert self.bad_logs() == []
        self.leased.clear()

    def reached_all(self, *states: str) -> None:
        """The sweep left its calls in each of ``states`` at least once."""
        assert {state: self.reached[state] for state in states if not self.reached[state]} == {}

    def allow(self, prompt: str, requests: int) -> None:
        """At most ``requests`` chat requests for ``prompt``, now and from now on."""
        self.allowed[prompt] = requests
        assert self.requests(prompt) <= requests

    async def close(self) -> None:
        """Close every Client, then the gateway (once every request it had been sent is
        handled); then nothing of limpet runs, no prompt got more requests than allowed,
        and nothing was logged amiss (tasks destroyed pending are logged when collected)."""
        for client in self.clients:
            await client.aclose()
        await self.gateway.aclose()
        gc.collect()
        assert limpet_tasks() == []
        over = {p: self.requests(p) for p, n in self.allowed.items() if self.requests(p) > n}
        assert over == {}
        assert self.bad_logs() == []


def key_of(client: Client, prompt: str) -> Awaitable[str]:
    """The cache key of ``ask(prompt)`` on ``client``."""
    body = ask(prompt)
    return client._keying.of(body, None)


def record(sweep: Sweep, monkeypatch: pytest.MonkeyPatch) -> None:
    """Record every answer the gateway produces (by prompt) and every lease asked for."""
    answer = FakeGateway._answer

    def recorded(
        self: FakeGateway, endpoint: FakeEndpoint, body: dict[str, Any]
    ) -> tuple[Answer, float]:
        produced = answer(self, endpoint, body)
        sweep.answers[prompt_of(body)].append(produced[0])
        return produced

    monkeypatch.setattr(FakeGateway, "_answer", recorded)
    for store in (RedisFlightStore, MemcachedFlightStore):
        acquire = store.acquire

        async def acquired(
            self: Any, key: str, token: str, lease: float, acquire: Any = acquire
        ) -> bool:
            sweep.leased.add(key)
            return bool(await acquire(self, key, token, lease))

        monkeypatch.setattr(store, "acquire", acquired)


def _shared_tier(tier: TierName, request: pytest.FixtureRequest) -> tuple[str, str, list[str]]:
    """The URL and prefix of ``tier``'s shared cache, and the Redis servers (each node of
    a cluster) to list leases on."""
    if tier == "redis-cluster":
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        nodes = [f"redis://127.0.0.1:{port}/0" for port in cluster.ports]
        url = cluster.cache_url
        return url, request.getfixturevalue("cluster_prefix"), nodes
    url = request.getfixturevalue(f"{tier}_url")
    prefix = request.getfixturevalue(f"{tier}_prefix")
    return url, prefix, [url] if tier == "redis" else []


@contextlib.asynccontextmanager
async def open_sweep(
    tier: TierName,
    request: pytest.FixtureRequest,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[Sweep]:
    """The world of one sweep on ``tier``; its Clients are closed and checked at the end."""
    async with contextlib.AsyncExitStack() as stack:
        found = Sweep(gateway, tier, caplog)
        if tier != "memory":
            url, prefix, servers = _shared_tier(tier, request)
            kind = MemcachedCache if tier == "memcached" else RedisCache

            def shared() -> SharedTier:
                return kind.from_url(url, prefix=prefix, read_timeout=LONG, write_timeout=LONG)

            found.shared = shared
            found.inspector = await stack.enter_async_context(shared())
            for server in servers:
                admin = redis.asyncio.Redis.from_url(server)
                found.admins += (await stack.enter_async_context(admin),)
        record(found, monkeypatch)
        try:
            yield found
            await found.close()
        finally:  # a failed test's Clients too, unchecked
            for client in found.clients:
                await client.aclose()


async def warm(sweep: Sweep, clients: Iterable[Client]) -> None:
    """Open what a call uses (the generations keys are made of, the connections), so
    that rounds differ by their cancellation alone; counted before any round."""
    for client in clients:
        await client.forget(**ask("warm"))
        await client.complete(**ask("warm"))
        await client.embed(model=EMBED_MODEL, input="warm")
    await sweep.nothing_left()
