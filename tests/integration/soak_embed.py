"""The embeddings soak's parts (``tests/integration/test_soak_embed.py``): the spying
embeddings route, the workload drawn from a seed, and a run of waves. The shared tier and
what the test does to it are ``soak_adversity``'s (built by ``soak_tiers``), as for the
chat soak."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from limpet import Client, Embeddings
from limpet.flight.embeddings import SharedFetch
from limpet.flight.shared import RedisFlight
from limpet.pipeline.embeddings import Embedder
from limpet.testing import FakeGateway
from limpet.testing.embeddings import DEFAULT_DIMENSIONS, FakeEmbeddings
from tests.integration.soak_adversity import (
    WAVE_DEADLINE,
    Launch,
    Shared,
    Stop,
    Wave,
    draw_kills,
    draw_outage,
    play,
    queue_faults,
    seeds,
)

MODEL = "openai/text-embedding-3-small"
SEEDS = seeds((5, 17, 31))
POOL = 20  # distinct texts, each embedded at two sizes (``DIMENSIONS``): 40 keys
DIMENSIONS = (None, 8)
WAVES = 8
CALLS_PER_WAVE = 30
HOT = 6  # the texts most inputs of a wave are drawn from: repeats in and across calls
MAX_INPUTS = 6
LATENCY = 0.02  # seconds per upstream answer: calls overlap, inputs coalesce
TIMEOUTS = (0.001, 0.005, 0.02, 0.05)
# Client 0 calls the gateway's endpoint "a", client 1 "b": the gateway tells who sent what.
ENDPOINTS = ("a", "b")

_asker: ContextVar[str] = ContextVar("asker")
# The call whose task is running: the keys its Client gives its inputs are noted in it.
_calling: ContextVar[Outcome | None] = ContextVar("calling", default=None)


def passages() -> list[str]:
    """Texts that differ only a little, so that a vector given to the wrong one shows."""
    return [f"soak passage {n}: what does a limpet hold on to?" for n in range(POOL)]


def size(dimensions: int | None) -> int:
    return dimensions or DEFAULT_DIMENSIONS


@dataclass(frozen=True)
class Produced:
    """One answer of the embeddings route: for which endpoint, model, size and inputs,
    at which tick of the run's counter, and the tokens it billed."""

    endpoint: str
    model: str
    dimensions: int
    texts: tuple[str, ...]
    tick: int
    tokens: int


class SpyEmbeddings(FakeEmbeddings):
    """The FakeGateway's embeddings route, giving each answer an id and remembering what
    it produced (its vectors are the pure ``fake_vector`` of each input)."""

    def __init__(self, gateway: FakeGateway, ticks: Iterator[int]) -> None:
        super().__init__(gateway)
        self.ticks = ticks
        self.produced: dict[str, Produced] = {}  # answer id -> what it answered
        # Cleared: every request waits, once ``asked`` is set, until it is set again.
        self.answering = asyncio.Event()
        self.answering.set()
        self.asked = asyncio.Event()

    async def serve(self, request: web.Request) -> web.StreamResponse:
        # Both Clients call endpoint "a" (their keys are one fleet's); each is answered as
        # the endpoint its X-Title names (``make_client``), so the gateway knows who asked.
        request.match_info["endpoint"] = request.headers["X-Title"]
        _asker.set(request.match_info["endpoint"])  # this handler's own task and context
        self.asked.set()
        await self.answering.wait()
        return await super().serve(request)

    def _answer(self, body: dict[str, Any], texts: list[str | list[int]]) -> dict[str, Any]:
        answer = super()._answer(body, texts)
        answer["id"] = f"embeddings-{len(self.produced)}"
        dimensions = size(body.get("dimensions"))
        tokens = answer["usage"]["prompt_tokens"]
        made = Produced(
            _asker.get(),
            body["model"],
            dimensions,
            tuple(str(text) for text in texts),
            next(self.ticks),
            tokens,
        )
        self.produced[answer["id"]] = made
        return answer


@dataclass
class Keys:
    """Every cache key the Clients gave an input."""

    # By (text, dimensions): keys under the generations read from the shared tier.
    known: dict[tuple[str, int | None], set[str]] = field(default_factory=dict)
    # Keys under the scope a Client uses while its first read of the generations fails
    # (``?``: by design, they match no entry of any generation, nor each other's).
    guessed: set[str] = field(default_factory=set)

    def all(self) -> set[str]:
        return self.guessed.union(*self.known.values())


def spy_on_keys(monkeypatch: pytest.MonkeyPatch) -> Keys:
    """Record every cache key the Clients give an input, and the keys of each call's
    inputs in its ``Outcome``."""
    keys = Keys()
    original = Embedder.keys

    def recorded(
        self: Embedder, model: str, texts: Any, params: dict[str, Any], **scope: str
    ) -> list[str]:
        made = original(self, model, texts, params, **scope)
        calling = _calling.get()
        if calling is not None:  # in the caller's own task (Run.call)
            calling.keys = made
        for text, key in zip(texts, made, strict=True):
            if "?" in scope["scope"]:
                keys.guessed.add(key)
            else:
                keys.known.setdefault((text, params.get("dimensions")), set()).add(key)
        return made

    monkeypatch.setattr(Embedder, "keys", recorded)
    return keys


def spy_on_following(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set once a process starts following another's flight (its lease was taken)."""
    following = asyncio.Event()
    follow = RedisFlight._follow

    async def recorded(self: RedisFlight[Any], *args: Any, **kwargs: Any) -> Any:
        following.set()
        return await follow(self, *args, **kwargs)

    monkeypatch.setattr(RedisFlight, "_follow", recorded)
    return following


def spy_on_follows(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys of the inputs a Client did not send itself, under a cross-process flight:
    another process sent them (or stored them before this one's lease was taken)."""
    followed: list[str] = []
    add = SharedFetch.add

    def recorded(self: SharedFetch[Any], key: str, outcome: Any) -> None:
        add(self, key, outcome)
        if key in self.from_others:
            followed.append(key)

    monkeypatch.setattr(SharedFetch, "add", recorded)
    return followed


# -- the workload, from the seed ---------------------------------------------------------


@dataclass
class Plan:
    """One ``embed()`` call as the seed drew it."""

    wave: int
    client: int  # 0 or 1
    texts: tuple[str, ...]
    dimensions: int | None = None
    single: bool = False  # ``input=`` as one string rather than a list of one
    stop: Stop = "none"
    gap: int = 0  # event-loop turns the launcher waits before starting it
    turns: int = 0  # for "cancel": turns from its start to its cancellation
    timeout: float | None = None  # for "timeout"


def draw(seed: int) -> list[Wave[Plan]]:
    """The whole run, from the seed alone."""
    rng = random.Random(seed)
    pool = passages()
    waves = []
    for wave in range(WAVES):
        hot = rng.sample(pool, HOT)
        plans = []
        for _ in range(CALLS_PER_WAVE):
            count = rng.randint(1, MAX_INPUTS)
            texts = [rng.choice(hot if rng.random() < 0.7 else pool) for _ in range(count)]
            roll = rng.random()
            stop: Stop = "cancel" if roll < 0.15 else "timeout" if roll < 0.3 else "none"
            plans.append(
                Plan(
                    wave=wave,
                    client=rng.randrange(2),
                    texts=tuple(texts),
                    dimensions=rng.choice(DIMENSIONS) if rng.random() < 0.3 else None,
                    single=count == 1 and rng.random() < 0.5,
                    stop=stop,
                    gap=rng.randrange(6),
                    turns=rng.randrange(40) if stop == "cancel" else 0,
                    timeout=rng.choice(TIMEOUTS) if stop == "timeout" else None,
                )
            )
        kills = draw_kills(rng)
        faults = []
        if wave > 0 and rng.random() < 0.3:
            faults.append((rng.choice(("status", "refused", "drop")), rng.randrange(1, 4)))
        waves.append(Wave(plans, kills, faults, draw_outage(rng)))
    return waves


# -- running it --------------------------------------------------------------------------


@dataclass
class Outcome:
    """How one call ended."""

    plan: Plan
    faulty: bool  # its wave had upstream faults queued
    started: int = -1  # the run's tick when it started
    result: Embeddings | None = None
    error: Exception | None = None
    # The cache key of each of its inputs: under the generations read, or under a guessed
    # scope (while its Client's first read of them fails), where no other call finds them.
    keys: list[str] = field(default_factory=list)
    cancelled: bool = False  # it ended with CancelledError
    cancel_sent: bool = False  # task.cancel() returned True


@dataclass
class Run:
    gateway: FakeGateway
    spy: SpyEmbeddings
    clients: tuple[Client, Client]
    shared: Shared
    ticks: Iterator[int]
    outcomes: list[Outcome] = field(default_factory=list)

    async def call(self, outcome: Outcome) -> None:
        plan = outcome.plan
        texts: str | list[str] = plan.texts[0] if plan.single else list(plan.texts)
        outcome.started = next(self.ticks)
        calling = _calling.set(outcome)
        try:
            outcome.result = await self.clients[plan.client].embed(
                model=MODEL, input=texts, dimensions=plan.dimensions, timeout=plan.timeout
            )
        except asyncio.CancelledError:
            outcome.cancelled = True
            raise
        except Exception as exc:  # judged by check_outcome
            outcome.error = exc
        finally:
            _calling.reset(calling)

    async def followed_across(
        self, following: asyncio.Event, texts: tuple[str, ...]
    ) -> tuple[Outcome, Outcome]:
        """Client 0 embeds ``texts`` while its request is held upstream, then client 1
        the same once it follows client 0's flight (``spy_on_following``), and the answer
        is let go: the seeded waves reach a cross-process follow only when the timing
        allows (on a loaded machine, some seeds never do); this reaches one for certain.
        """
        spy = self.spy
        outcomes = tuple(Outcome(Plan(WAVES, client, texts), faulty=False) for client in (0, 1))
        self.outcomes += outcomes
        spy.asked.clear()
        following.clear()
        spy.answering.clear()
        try:
            async with asyncio.timeout(WAVE_DEADLINE):
                leading = asyncio.create_task(self.call(outcomes[0]))
                await spy.asked.wait()  # client 0's request is upstream: its leases taken
                trailing = asyncio.create_task(self.call(outcomes[1]))
                await following.wait()
        finally:
            spy.answering.set()
        async with asyncio.timeout(WAVE_DEADLINE):
            await asyncio.gather(leading, trailing)
        return outcomes[0], outcomes[1]

    async def wave(self, wave: Wave[Plan]) -> None:
        self.shared.next_wave()
        endpoints = [self.gateway.endpoint(name) for name in ENDPOINTS]
        for endpoint in endpoints:
            queue_faults(endpoint, wave.faults)
        outcomes = [Outcome(plan, faulty=bool(wave.faults)) for plan in wave.plans]
        self.outcomes += outcomes
        launches = [
            Launch(o.plan.gap, self.call(o), o.plan.turns if o.plan.stop == "cancel" else None)
            for o in outcomes
        ]
        await play(self.shared, self.clients, launches, wave.kills, wave.outage)
        for outcome, launch in zip(outcomes, launches, strict=True):
            outcome.cancel_sent = launch.cancel_sent
        for endpoint in endpoints:
            endpoint.clear_faults()  # those this wave's calls did not use up
