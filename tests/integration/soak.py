"""The soak's parts (``tests/integration/test_soak.py``): the oracle gateway, the
workload drawn from a seed, the shared tier both Clients use and what the test does to it,
and a run of waves. The fixtures, the checks and the test are in the test module."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import pytest
import redis.asyncio

from limpet import (
    Client,
    Completion,
    Endpoint,
    FlightConfig,
    MemcachedCache,
    MemoryCache,
    RedisCache,
    RetryConfig,
    TieredCache,
)
from limpet.cache.breaker import CircuitBreaker
from limpet.cache.memcached.leases import MemcachedFlightStore
from limpet.cache.redis.leases import RedisFlightStore
from limpet.errors import CacheUnavailableError
from limpet.flight.shared import FlightNotice
from limpet.http.chunks import StreamChunk
from limpet.testing import FakeGateway
from limpet.testing.endpoint import FakeEndpoint
from limpet.testing.wire import Answer
from tests.fakes import FakeClock
from tests.integration.chat import ask

SEEDS = (11, 23, 47)
TEXTS = 24  # each asked three ways (see ``prompts``): 72 distinct requests
WAVES = 8
CALLS_PER_WAVE = 36
HOT = 8  # the prompts most calls of a wave ask, so that identical calls overlap
LATENCY = 0.02  # seconds per upstream answer: calls overlap, waiters coalesce
TIMEOUTS = (0.001, 0.005, 0.02, 0.05)  # a ``timeout=`` that may or may not pass
COOLDOWN = 1.0
# A lease far longer than the test runs, so one left behind is still there to be found;
# a follower stuck behind one goes upstream itself after ``follow_timeout``.
FLIGHT = FlightConfig(lease=60.0, poll=0.05, follow_timeout=2.0)
RETRY = RetryConfig(max_attempts=2, initial_backoff=0.001, max_backoff=0.005)
# A failure rather than a hang if the run wedges; a passing wave takes a fraction of it.
WAVE_DEADLINE = 30.0
# Fields that say how an answer travels, not what it is (``stream()`` adds them).
DELIVERY = frozenset({"stream", "stream_options"})

Kind = Literal["complete", "stream"]
Stop = Literal["none", "cancel", "timeout"]
SharedTier = RedisCache | MemcachedCache


def fingerprint(body: dict[str, Any]) -> bytes:
    """What a request asks, whatever its key order and however it travels."""
    asked = {name: value for name, value in body.items() if name not in DELIVERY}
    return orjson.dumps(asked, option=orjson.OPT_SORT_KEYS)


class SpyGateway(FakeGateway):
    """A FakeGateway that remembers every answer it produced: for which request, with what
    text, and at which tick of the run's counter."""

    def __init__(self, ticks: Iterator[int], **options: Any) -> None:
        super().__init__(**options)
        self.ticks = ticks
        self.asked: dict[str, bytes] = {}  # answer id -> fingerprint of its request
        self.text: dict[str, str] = {}  # answer id -> its content
        self.produced_at: dict[str, int] = {}

    def _answer(self, endpoint: FakeEndpoint, body: dict[str, Any]) -> tuple[Answer, float]:
        answer, latency = super()._answer(endpoint, body)
        assert answer.id not in self.asked, "the gateway reused an answer id"
        self.asked[answer.id] = fingerprint(body)
        self.text[answer.id] = answer.content
        self.produced_at[answer.id] = next(self.ticks)
        return answer, latency


def prompts() -> list[dict[str, Any]]:
    """Requests that differ only a little: each text plain, capped, and after a system
    message, so that a mix-up between near-identical requests would show."""
    made = []
    for text in range(TEXTS):
        question = f"soak question {text}: what does a limpet hold on to?"
        made += [ask(question), ask(question, max_tokens=12), ask(question, system="Be brief.")]
    return made


# -- the workload, from the seed ---------------------------------------------------------


@dataclass
class Plan:
    """One call as the seed drew it."""

    wave: int
    client: int  # 0 or 1
    prompt: int
    kind: Kind = "complete"
    stop: Stop = "none"
    gap: int = 0  # event-loop turns the launcher waits before starting it
    turns: int = 0  # for "cancel": turns from its start to its cancellation
    timeout: float | None = None  # for "timeout"


@dataclass
class Wave:
    plans: list[Plan]
    kills: list[int]  # turns from the wave's start to each kill of the Redis connections
    faults: list[tuple[str, int]]  # (kind, times) queued at the gateway for this wave
    outage: tuple[int, int] | None  # (client, turn): its shared tier is down from then on


def draw(seed: int) -> list[Wave]:
    """The whole run, from the seed alone."""
    rng = random.Random(seed)
    count = len(prompts())
    waves = []
    for wave in range(WAVES):
        hot = rng.sample(range(count), HOT)
        plans = []
        for _ in range(CALLS_PER_WAVE):
            roll = rng.random()
            stop: Stop = "cancel" if roll < 0.15 else "timeout" if roll < 0.3 else "none"
            plans.append(
                Plan(
                    wave=wave,
                    client=rng.randrange(2),
                    prompt=rng.choice(hot) if rng.random() < 0.7 else rng.randrange(count),
                    kind="stream" if rng.random() < 0.4 else "complete",
                    stop=stop,
                    gap=rng.randrange(6),
                    turns=rng.randrange(40) if stop == "cancel" else 0,
                    timeout=rng.choice(TIMEOUTS) if stop == "timeout" else None,
                )
            )
        kills = []
        for _ in range(rng.randrange(5)):
            kills.append(rng.randrange(150))
            if rng.random() < 0.3:  # again at once: redis-py's one retry meets it too
                kills.append(kills[-1] + rng.randrange(1, 4))
        faults = []
        if wave > 0 and rng.random() < 0.3:
            kind = rng.choice(("status", "drop", "drop_mid_stream", "stream_error"))
            faults.append((kind, rng.randrange(1, 4)))
        outage = (rng.randrange(2), rng.randrange(150)) if rng.random() < 0.4 else None
        waves.append(Wave(plans, sorted(kills), faults, outage))
    return waves


async def turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def queue_faults(endpoint: FakeEndpoint, faults: list[tuple[str, int]]) -> None:
    for kind, times in faults:
        if kind == "status":
            endpoint.fail(500, times=times)
        elif kind == "drop":
            endpoint.drop_connection(times=times)
        elif kind == "drop_mid_stream":
            endpoint.drop_connection(times=times, after_chunks=2)
        else:
            endpoint.stream_error(after_chunks=1, times=times)


# -- the shared tier ---------------------------------------------------------------------


def named(url: str, name: str) -> str:
    """``url`` with a ``client_name`` every connection of its pool announces (CLIENT
    SETNAME), so that only this test's connections are ever killed."""
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), ("client_name", name)]
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass
class Shared:
    """The shared tier of both Clients, and what the test does to it and asks of it."""

    caches: tuple[SharedTier, SharedTier]
    clocks: tuple[FakeClock, FakeClock]
    # The test's own view of the tier, never killed, open after the Clients have closed.
    inspector: SharedTier
    admin: redis.asyncio.Redis | None = None  # Redis only: to kill connections, find leases
    names: frozenset[str] = frozenset()  # the client names of the Clients' connections
    killed: int = 0
    refused_releases: set[str] = field(default_factory=set)  # keys whose release failed

    async def kill(self) -> None:
        """Kill every connection of both Clients: by ID, as CLIENT LIST names them, so no
        other connection (another test's, the admin's own) is touched."""
        if self.admin is None:
            return
        for found in await self.admin.client_list():
            if found.get("name") in self.names:
                self.killed += bool(await self.admin.client_kill_filter(_id=found["id"]))

    async def kill_at(self, kills: list[int]) -> None:
        """Kill at each of ``kills``, counted in turns from now."""
        done = 0
        for turn in kills:
            await turns(turn - done)
            done = turn
            await self.kill()

    async def down_at(self, outage: tuple[int, int] | None) -> None:
        """One Client's shared tier goes down (as three timeouts in a row would have it:
        its breaker opens) until the next wave moves the breakers' clocks."""
        if outage is None:
            return
        client, turn = outage
        await turns(turn)
        breaker = self.caches[client].breaker
        while breaker.state != "open":
            breaker.record_failure()

    async def leases(self, keys: set[str]) -> set[str]:
        """The Redis or Memcached keys of the leases held now: every one under the prefix
        on Redis, those of ``keys`` on Memcached (which cannot list its keys)."""
        cache = self.inspector
        if isinstance(cache, RedisCache):
            assert self.admin is not None
            found = [key async for key in self.admin.scan_iter(match=cache.lock_key("*"))]
            return {key.decode() for key in found}
        store = cache.flight_store
        return {cache.lock_key(key).decode() for key in keys if await store.holder(key)}

    def lease_keys(self, keys: set[str]) -> set[str]:
        """The Redis or Memcached keys of the leases of ``keys``, as ``leases()`` names them."""
        lock: Callable[[str], str | bytes] = self.inspector.lock_key
        return {k.decode() if isinstance(k, bytes) else k for k in map(lock, keys)}

    async def holds(self, key: str) -> bool:
        """Whether the shared tier holds an entry for ``key``."""
        return await self.inspector.get(key) is not None

    async def recovered(self) -> None:
        """Both breakers closed again and every write behind landed."""
        for clock, cache in zip(self.clocks, self.caches, strict=True):
            while cache.breaker.state != "closed":
                if cache.breaker.state == "open":
                    clock.advance(COOLDOWN)
                # The probe; or, when a write behind is probing already, a turn for it.
                with contextlib.suppress(CacheUnavailableError):
                    await cache.get("probe")
                await asyncio.sleep(0)
            await cache.flush()


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


def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, cooldown=COOLDOWN, clock=clock)


PATIENT: dict[str, Any] = {"read_timeout": 1.0, "write_timeout": 1.0}


@contextlib.asynccontextmanager
async def redis_tier(request: pytest.FixtureRequest) -> AsyncIterator[Shared]:
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    names = [f"limpet-soak-{uuid.uuid4().hex[:12]}-{side}" for side in "ab"]
    clocks = (FakeClock(), FakeClock())
    a, b = (
        RedisCache.from_url(named(url, name), prefix=prefix, breaker=breaker(clock), **PATIENT)
        for name, clock in zip(names, clocks, strict=True)
    )
    async with (
        RedisCache.from_url(url, prefix=prefix, **PATIENT) as inspector,
        redis.asyncio.Redis.from_url(url) as admin,
    ):
        yield Shared((a, b), clocks, inspector, admin, frozenset(names))


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


TIERS = {"redis": redis_tier, "memcached": memcached_tier}


# -- running it --------------------------------------------------------------------------


@dataclass
class Outcome:
    """How one call ended."""

    plan: Plan
    faulty: bool  # its wave had upstream faults queued
    started: int = -1  # the run's tick when it started
    completion: Completion | None = None
    chunks: list[StreamChunk] = field(default_factory=list)
    error: Exception | None = None
    cancelled: bool = False  # it ended with CancelledError
    cancel_sent: bool = False  # task.cancel() returned True


@dataclass
class Run:
    gateway: SpyGateway
    clients: tuple[Client, Client]
    shared: Shared
    ticks: Iterator[int]
    requests: list[dict[str, Any]] = field(default_factory=prompts)
    outcomes: list[Outcome] = field(default_factory=list)

    async def call(self, outcome: Outcome) -> None:
        plan = outcome.plan
        client, request = self.clients[plan.client], self.requests[plan.prompt]
        outcome.started = next(self.ticks)
        try:
            if plan.kind == "complete":
                outcome.completion = await client.complete(**request, timeout=plan.timeout)
            else:
                async with client.stream(**request, timeout=plan.timeout) as stream:
                    async for chunk in stream:
                        outcome.chunks.append(chunk)
                outcome.completion = stream.completion
        except asyncio.CancelledError:
            outcome.cancelled = True
            raise
        except Exception as exc:  # judged by check_outcome
            outcome.error = exc

    async def wave(self, wave: Wave) -> None:
        for clock in self.shared.clocks:
            clock.advance(COOLDOWN)  # a breaker the last wave opened may probe again
        endpoint = self.gateway.endpoint("a")
        queue_faults(endpoint, wave.faults)
        tasks: list[asyncio.Task[None]] = []

        async def cancel(task: asyncio.Task[None], outcome: Outcome) -> None:
            await turns(outcome.plan.turns)
            outcome.cancel_sent = task.cancel()

        async def launch() -> None:
            for plan in wave.plans:
                await turns(plan.gap)
                outcome = Outcome(plan, faulty=bool(wave.faults))
                self.outcomes.append(outcome)
                task = asyncio.create_task(self.call(outcome))
                tasks.append(task)
                if plan.stop == "cancel":
                    tasks.append(asyncio.create_task(cancel(task, outcome)))

        async with asyncio.timeout(WAVE_DEADLINE):
            shared = self.shared
            await asyncio.gather(launch(), shared.kill_at(wave.kills), shared.down_at(wave.outage))
            await asyncio.wait(tasks)
            # Shared calls whose callers all left were cancelled, and release their
            # leases as they unwind: wait for them too.
            await asyncio.gather(*(landed(client) for client in self.clients))
        endpoint.clear_faults()  # those this wave's calls did not use up


async def landed(client: Client) -> None:
    """Returns once no shared call of ``client`` (a ``complete()`` flight, an upstream
    stream) is running."""
    local = client._chat._flight
    running: list[asyncio.Future[Any]] = [] if local is None else list(local._running)
    running += [flight.task for flight in client._pipelines.stream_flights._running]
    if running:
        await asyncio.wait(running)


def make_client(gateway: FakeGateway, tier: SharedTier) -> Client:
    return Client(
        endpoints=[Endpoint("a", gateway.base_url("a"))],
        cache=TieredCache(MemoryCache(), tier),
        flight=FLIGHT,
        retry=RETRY,
    )


# -- the oracle --------------------------------------------------------------------------
