"""What both soaks (``test_soak.py``, ``test_soak_embed.py``) do to two Clients: the
shared tier they use (``Shared``: Redis, Redis with an ``hmac_key``, a Redis Cluster or
Memcached, each Client behind its own breaker on a fake clock; built in ``soak_tiers``),
its connections killed (on every node of a cluster) and one Client's breaker opened at
seeded event-loop turns, upstream faults, and the launcher of a wave: calls started a
number of turns apart, some cancelled a number of turns after they started. Nothing here
waits on a clock."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import redis.asyncio

from limpet import (
    Client,
    Endpoint,
    FlightConfig,
    MemcachedCache,
    MemoryCache,
    RedisCache,
    RetryConfig,
    TieredCache,
)
from limpet.cache.sealing import Seal
from limpet.errors import CacheUnavailableError
from limpet.testing import FakeGateway
from limpet.testing.endpoint import FakeEndpoint
from tests.fakes import FakeClock

COOLDOWN = 1.0
# A lease far longer than the test runs, so one left behind is still there to be found;
# a follower stuck behind one goes upstream itself after ``follow_timeout``.
FLIGHT = FlightConfig(lease=60.0, poll=0.05, follow_timeout=2.0)
RETRY = RetryConfig(max_attempts=2, initial_backoff=0.001, max_backoff=0.005)
# A failure rather than a hang if the run wedges; a passing wave takes a fraction of it.
WAVE_DEADLINE = 30.0
KILL_TURNS = 150  # kills and outages fall within this many turns of a wave's start

SharedTier = RedisCache | MemcachedCache
Stop = Literal["none", "cancel", "timeout"]  # how a call of a wave ends, as drawn


PlanT = TypeVar("PlanT")


def seeds(default: tuple[int, ...]) -> tuple[int, ...]:
    """A soak's seeds: ``default``, or those ``LIMPET_SOAK_SEEDS`` names (``100-139``
    or ``5,17,31``), to soak longer by hand than CI does."""
    named = os.environ.get("LIMPET_SOAK_SEEDS", "").strip()
    if not named:
        return default
    first, dash, last = named.partition("-")
    if dash:
        return tuple(range(int(first), int(last) + 1))
    return tuple(int(seed) for seed in named.split(","))


@dataclass
class Wave(Generic[PlanT]):
    """One wave of a soak: its calls' plans, and the adversity drawn for it."""

    plans: list[PlanT]
    kills: list[int]  # turns from the wave's start to each kill of the Redis connections
    faults: list[tuple[str, int]]  # (kind, times) queued at the gateway for this wave
    outage: tuple[int, int] | None  # (client, turn): its shared tier is down from then on


async def turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def draw_kills(rng: random.Random) -> list[int]:
    """Turns from a wave's start to each kill of the Redis connections, in order."""
    kills = []
    for _ in range(rng.randrange(5)):
        kills.append(rng.randrange(KILL_TURNS))
        if rng.random() < 0.3:  # again at once: redis-py's one retry meets it too
            kills.append(kills[-1] + rng.randrange(1, 4))
    return sorted(kills)


def draw_outage(rng: random.Random) -> tuple[int, int] | None:
    """(client, turn): that Client's shared tier is down from then on, or no outage."""
    return (rng.randrange(2), rng.randrange(KILL_TURNS)) if rng.random() < 0.4 else None


def queue_faults(endpoint: FakeEndpoint, faults: list[tuple[str, int]]) -> None:
    for kind, times in faults:
        if kind == "status":
            endpoint.fail(500, times=times)
        elif kind == "refused":  # final: a leader's error its followers may be told
            endpoint.fail(400, times=times)
        elif kind == "drop":
            endpoint.drop_connection(times=times)
        elif kind == "drop_mid_stream":
            endpoint.drop_connection(times=times, after_chunks=2)
        else:
            endpoint.stream_error(after_chunks=1, times=times)


# -- the shared tier ---------------------------------------------------------------------


@dataclass
class Shared:
    """The shared tier of both Clients, and what the test does to it and asks of it."""

    caches: tuple[SharedTier, SharedTier]
    clocks: tuple[FakeClock, FakeClock]
    # The test's own view of the tier, never killed, open after the Clients have closed.
    inspector: SharedTier
    # Redis only: a plain connection to each server (every node of a cluster), to kill
    # the Clients' connections and to list leases.
    admins: tuple[redis.asyncio.Redis, ...] = ()
    names: frozenset[str] = frozenset()  # the client names of the Clients' connections
    # Both Clients' key (their TieredCache's and shared tier's): entries and notices are
    # signed with it, and every entry the tier holds must be.
    hmac_key: bytes | None = None
    killed: int = 0
    refused_releases: set[str] = field(default_factory=set)  # keys whose release failed

    async def kill(self) -> None:
        """Kill every connection of both Clients, on every server: by ID, as CLIENT LIST
        names them, so no other connection (another test's, the admins' own) is touched."""
        for admin in self.admins:
            for found in await admin.client_list():
                if found.get("name") in self.names:
                    self.killed += bool(await admin.client_kill_filter(_id=found["id"]))

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

    def next_wave(self) -> None:
        """Move the breakers' clocks: a breaker the last wave opened may probe again."""
        for clock in self.clocks:
            clock.advance(COOLDOWN)

    async def leases(self, keys: set[str]) -> set[str]:
        """The Redis or Memcached keys of the leases held now: every one under the prefix
        on Redis (on every node of a cluster), those of ``keys`` on Memcached (which
        cannot list its keys)."""
        cache = self.inspector
        if isinstance(cache, RedisCache):
            assert self.admins
            pattern = cache.lock_key("*")
            return {
                key.decode()
                for admin in self.admins
                async for key in admin.scan_iter(match=pattern, count=1000)
            }
        store = cache.flight_store
        return {cache.lock_key(key).decode() for key in keys if await store.holder(key)}

    def lease_keys(self, keys: set[str]) -> set[str]:
        """The Redis or Memcached keys of the leases of ``keys``, as ``leases()`` names them."""
        lock: Callable[[str], str | bytes] = self.inspector.lock_key
        return {k.decode() if isinstance(k, bytes) else k for k in map(lock, keys)}

    async def stray_leases(self, keys: set[str]) -> set[str]:
        """The leases held now but those whose release the shared tier refused."""
        return await self.leases(keys) - self.lease_keys(self.refused_releases)

    async def holds(self, key: str) -> bool:
        """Whether the shared tier holds an entry for ``key``; one there must be signed
        with both Clients' ``hmac_key``, when they have one (a ``CacheCorruptError`` if
        not), whatever wrote it (a write behind, a lease's release)."""
        data = await self.inspector.get(key)
        if data is not None and self.hmac_key is not None:
            # The envelope every kind of entry shares: its magic, then its format.
            Seal(data[:2], data[2], self.hmac_key, "entry").open(data)
        return data is not None

    def tiered(self, client: int) -> TieredCache:
        """The cache of Client ``client``: a memory tier of its own above its shared tier,
        signing entries with the Clients' ``hmac_key``."""
        return TieredCache(MemoryCache(), self.caches[client], hmac_key=self.hmac_key)

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


def make_client(gateway: FakeGateway, cache: TieredCache, endpoint: str = "a") -> Client:
    """A Client on ``cache`` (``Shared.tiered()``) calling endpoint "a" of ``gateway``, as
    every process of one fleet does (an endpoint's URL enters the keys), and naming
    itself ``endpoint`` in its ``X-Title``: what a spy may answer it as."""
    return Client(
        endpoints=[Endpoint(endpoint, gateway.base_url("a"))],
        app_title=endpoint,
        cache=cache,
        flight=FLIGHT,
        retry=RETRY,
    )


# -- a wave ------------------------------------------------------------------------------


@dataclass
class Launch:
    """One call of a wave, as the launcher starts it."""

    gap: int  # event-loop turns the launcher waits before starting it
    call: Coroutine[Any, Any, None]
    cancel: int | None = None  # turns from its start to its cancellation (None: never)
    cancel_sent: bool = False  # task.cancel() returned True


async def play(
    shared: Shared,
    clients: tuple[Client, Client],
    launches: list[Launch],
    kills: list[int],
    outage: tuple[int, int] | None,
) -> None:
    """Start ``launches`` while the shared tier is killed at ``kills`` and goes down for
    ``outage``; return once every call, and every shared call they left running, ended."""
    tasks: list[asyncio.Task[None]] = []

    async def cancel(task: asyncio.Task[None], launch: Launch, after: int) -> None:
        await turns(after)
        launch.cancel_sent = task.cancel()

    async def start() -> None:
        for launch in launches:
            await turns(launch.gap)
            task = asyncio.create_task(launch.call)
            tasks.append(task)
            if launch.cancel is not None:
                tasks.append(asyncio.create_task(cancel(task, launch, launch.cancel)))

    async with asyncio.timeout(WAVE_DEADLINE):
        await asyncio.gather(start(), shared.kill_at(kills), shared.down_at(outage))
        await asyncio.wait(tasks)
        # Shared calls whose callers all left were cancelled, or run on, and release
        # their leases as they end: wait for them too.
        await asyncio.gather(*(landed(client) for client in clients))


async def landed(client: Client) -> None:
    """Returns once no shared call of ``client`` (a ``complete()`` flight, an upstream
    stream, an ``embed()`` sending) is running."""
    local = client._chat._flight
    running: list[asyncio.Future[Any]] = [] if local is None else list(local._running)
    running += [flight.task for flight in client._pipelines.stream_flights._running]
    running += client._embeds.embedder._tasks
    if running:
        await asyncio.wait(running)
