"""A seeded soak: what a cache exists for, under everything at once.

No caller is ever served an answer that was not produced for its own request, and
nothing is left behind. Two Clients (two "processes": each its own memory tier) share one
Redis (or Memcached) tier under a prefix of their own and call one FakeGateway over
loopback. A workload drawn from ``random.Random(seed)`` (a few hundred ``complete()`` and
``stream()`` calls over a few dozen near-identical prompts, launched concurrently in
waves, so there are hits, misses and waiters coalesced in and across both Clients) runs
under seeded adversity: callers cancelled after a number of event-loop turns, callers
with a tiny ``timeout=``, every Redis connection of both Clients killed at random turns
(sometimes twice in a row), one Client's shared tier down for the rest of a wave (its
breaker opened, as three timeouts in a row would), and upstream faults in some waves.
Killed connections mostly go unnoticed (redis-py retries once on a fresh connection, and
pub/sub subscribes again): the outages are what make the Clients fall through.

The oracle is the gateway itself: ``SpyGateway`` records every answer it produced and the
request it answered. Every answer served must be one produced for exactly that call's
request, whole; a miss must be the caller's own fresh answer; every caller must end as
its plan allows (an answer; ``CancelledError`` once cancelled; ``APITimeoutError`` past
its timeout; ``APIError`` in a wave with upstream faults; nothing else). Then no lease is
left but those whose release the shared tier refused, each Client's ``Stats`` count
exactly what its callers saw, and a last pass of every prompt through both Clients is
served from the cache whenever an entry exists.

Everything is ordered by event-loop turns (``asyncio.sleep(0)``) and by waiting on the
calls themselves, never by sleeping: the gateway's latency and the tiny timeouts are the
adversity, not clocks anything waits on. Breakers run on fake clocks, moved once a wave.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import pytest
import redis.asyncio

from limpet import (
    CacheStatus,
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
from limpet.errors import APIError, APITimeoutError, CacheUnavailableError
from limpet.flight.shared import FlightNotice
from limpet.http.chunks import StreamChunk
from limpet.testing import FakeGateway
from limpet.testing.endpoint import FakeEndpoint
from limpet.testing.wire import Answer
from tests.fakes import FakeClock
from tests.integration.chat import ask
from tests.integration.test_lifecycle import limpet_tasks

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


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("memcached", marks=pytest.mark.memcached),
    ]
)
async def shared(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Shared]:
    """Both Clients' shared tier: Redis (whose connections the test kills) or Memcached."""
    async with TIERS[request.param](request) as tier:
        spy_on_releases(tier, monkeypatch)
        yield tier


@pytest.fixture
def ticks() -> Iterator[int]:
    return itertools.count()


@pytest.fixture
async def spy(ticks: Iterator[int]) -> AsyncIterator[SpyGateway]:
    async with SpyGateway(ticks, endpoints=("a",), latency=LATENCY) as gw:
        yield gw


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


def check_served(run: Run, outcome: Outcome, keys: dict[bytes, str]) -> None:
    """What ``outcome``'s caller was served was produced for its request, whole."""
    completion, plan, gateway = outcome.completion, outcome.plan, run.gateway
    assert completion is not None, f"{plan}: ended with no answer and no error"
    asked = fingerprint(run.requests[plan.prompt])
    answer = completion.raw.get("id")
    assert answer in gateway.asked, f"{plan}: served {answer!r}, which was never produced"
    assert gateway.asked[answer] == asked, (
        f"{plan}: served {answer!r}, produced for {gateway.asked[answer]!r}"
    )
    assert completion.content == gateway.text[answer], f"{plan}: not the whole answer"
    assert completion.cache in (CacheStatus.HIT, CacheStatus.MISS, CacheStatus.COALESCED), plan
    assert completion.key is not None
    assert keys.setdefault(asked, completion.key) == completion.key, f"{plan}: a second key"
    if completion.cache is CacheStatus.MISS:
        # Its own upstream request, sent after it started: not anything older.
        assert gateway.produced_at[answer] > outcome.started, f"{plan}: a MISS not its own"
    if plan.kind == "stream":
        assert {chunk.raw.get("id") for chunk in outcome.chunks} == {answer}, plan
        assert "".join(chunk.content or "" for chunk in outcome.chunks) == completion.content


def check_outcome(run: Run, outcome: Outcome, keys: dict[bytes, str]) -> None:
    """``outcome``'s caller ended as its plan allows, and what it was served is right."""
    plan, error = outcome.plan, outcome.error
    if outcome.cancel_sent:
        # Once cancel() took, nothing may swallow the cancellation.
        assert outcome.cancelled, f"{plan}: its cancellation was swallowed: {outcome}"
        return
    assert not outcome.cancelled, f"{plan}: cancelled, but not by the test"
    if error is None:
        check_served(run, outcome, keys)
    elif outcome.faulty and isinstance(error, APIError):
        pass  # an upstream fault of its wave (or its timeout: an APIError too)
    elif plan.stop == "timeout":
        assert isinstance(error, APITimeoutError), f"{plan}: raised {error!r}"
    else:
        raise AssertionError(f"{plan}: raised {error!r}") from error


def check_stats(run: Run) -> None:
    """Each Client's Stats count exactly what its callers saw (a caller cancelled is not
    counted: it neither returned nor raised an upstream error)."""
    for index, client in enumerate(run.clients):
        mine = [o for o in run.outcomes if o.plan.client == index and not o.cancel_sent]
        served = Counter(o.completion.cache for o in mine if o.completion is not None)
        failed = sum(isinstance(o.error, APIError) for o in mine)
        stats = client.stats
        counted = (stats.hits, stats.misses, stats.coalesced, stats.bypassed, stats.errors)
        expected = (
            served[CacheStatus.HIT],
            served[CacheStatus.MISS],
            served[CacheStatus.COALESCED],
            served[CacheStatus.BYPASS],
            failed,
        )
        assert counted == expected, f"client {index}: {stats}"
        assert stats.requests == sum(served.values())
        assert stats.corrupt == 0, f"client {index} read an entry not bound to its key"


async def check_leases(run: Run, keys: set[str]) -> None:
    """No lease is left but those whose release the shared tier refused."""
    left = await run.shared.leases(keys)
    assert left <= run.shared.lease_keys(run.shared.refused_releases), left


# -- the soak ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
async def test_soak_every_caller_gets_its_own_answer_and_nothing_is_left_behind(
    seed: int,
    spy: SpyGateway,
    shared: Shared,
    ticks: Iterator[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    waves = draw(seed)
    a, b = (make_client(spy, cache) for cache in shared.caches)
    run = Run(spy, (a, b), shared, ticks)
    async with a, b:
        for wave in waves:
            await run.wave(wave)

        keys: dict[bytes, str] = {}
        for outcome in run.outcomes:
            check_outcome(run, outcome, keys)
        assert len(set(keys.values())) == len(keys), "two requests share a key"
        served = [(o.plan, o.completion) for o in run.outcomes if o.completion is not None]
        await check_leases(run, set(keys.values()))
        check_stats(run)

        # What the run covered: every kind of answer and of adversity.
        statuses = Counter(completion.cache for _, completion in served)
        assert statuses.keys() >= {CacheStatus.HIT, CacheStatus.MISS, CacheStatus.COALESCED}
        assert any(o.cancel_sent for o in run.outcomes)
        assert any(isinstance(o.error, APITimeoutError) for o in run.outcomes)
        assert shared.killed > 0 or shared.admin is None or not any(w.kills for w in waves)
        # Which Client's caller went upstream for each answer: one caller at most.
        led: dict[str, int] = {}
        for plan, completion in served:
            if completion.cache is CacheStatus.MISS:
                answer = completion.raw["id"]
                assert answer not in led, f"{plan}: {answer} was already another's MISS"
                led[answer] = plan.client
        crossed = [plan for plan, c in served if led.get(c.raw["id"], plan.client) != plan.client]
        assert crossed, "no answer went from one Client to the other"

        # A last pass of every prompt through both Clients, once every write behind has
        # landed: from the cache whenever an entry exists (a Client's own answers are in
        # its memory tier). The Clients may hold different answers to one request (each
        # went upstream while the shared tier was out), but never different texts.
        async with asyncio.timeout(WAVE_DEADLINE):
            await shared.recovered()
        assert [client.stats.breaker_state for client in run.clients] == ["closed", "closed"]
        answered = {(plan.client, plan.prompt) for plan, _ in served}
        for prompt, request in enumerate(run.requests):
            key = keys.get(fingerprint(request))
            stored = key is not None and await shared.holds(key)
            texts = set()
            for client in (0, 1):
                outcome = Outcome(Plan(WAVES, client, prompt), faulty=False)
                run.outcomes.append(outcome)
                await run.call(outcome)
                check_outcome(run, outcome, keys)
                assert outcome.completion is not None
                if stored or (client, prompt) in answered:
                    assert outcome.completion.cache is CacheStatus.HIT, (outcome.plan, stored)
                texts.add(outcome.completion.content)
            assert len(texts) == 1, f"prompt {prompt}: the Clients disagree"
        check_stats(run)
        await check_leases(run, set(keys.values()))

    await check_leases(run, set(keys.values()))
    assert limpet_tasks() == []
    unretrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert unretrieved == []
