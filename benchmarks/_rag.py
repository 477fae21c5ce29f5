"""The multi-tenant RAG workload of ``sticky`` and ``one_gateway``, in simulated time.

Tenants each have a ~6k-token document marked with ``cache_control`` after a shared,
marked ~1.2k-token system prompt, and ask questions every few simulated minutes.
:func:`replay` sends the arrivals through a Client in order while they overlap in
flight, moving an :class:`ArrivalClock` that the gateway's prompt caches and the router
read, so cache TTLs act as they would over the half-hour the workload stands for, in
about a second of real time.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks._harness import SimClock
from limpet import Client
from limpet.models import Usage
from limpet.testing.provider_cache import PromptCacheResult, ProviderPromptCache

MODEL = "anthropic/claude-sonnet-4.6"
CC = {"type": "ephemeral"}
# Seconds for an uncached prompt (a cached one takes a fifth of it). Simulated time runs
# about a thousand times faster than real time here, so 5 ms stands for a few seconds:
# one tenant's questions, minutes apart, never overlap in flight, as with real calls.
LATENCY = 0.005
TENANT_PERIOD = 210.0  # simulated seconds between one tenant's questions
JITTER = 30.0  # +/- seconds around each
WORKERS = 16
SYSTEM = "You answer questions about the tenant's document, citing it. " * 80

Arrival = tuple[float, dict[str, Any]]  # (simulated seconds from the start, body)


def workload(
    tenants: int,
    questions: int,
    *,
    period: float = TENANT_PERIOD,
    hot_share: float = 0.0,
    seed: int = 1,
) -> list[Arrival]:
    """Requests in arrival order: each tenant asks every ``period`` seconds (+/- the
    jitter), starting at a random phase; with ``hot_share``, tenant 0 also asks that
    share of all questions, spread evenly over the run."""
    rng = random.Random(seed)
    times: list[tuple[float, int]] = []
    for tenant in range(tenants):
        phase = rng.uniform(0, period)
        for k in range(questions):
            jitter = rng.uniform(-JITTER, JITTER) * min(period / TENANT_PERIOD, 1.0)
            times.append((max(phase + k * period + jitter, 0.0), tenant))
    if hot_share:
        extra = round(len(times) * hot_share / (1 - hot_share))
        span = questions * period
        times += [(rng.uniform(0, span), 0) for _ in range(extra)]
    times.sort()
    return [(at, rag(tenant, index)) for index, (at, tenant) in enumerate(times)]


def rag(tenant: int, index: int) -> dict[str, Any]:
    """Question ``index``, asked by ``tenant`` of its document."""
    document = f"Tenant {tenant} handbook. " + f"Section on topic {tenant}, in detail. " * 640
    question = f"Question {index}: what does the handbook say about case {index % 97}?"
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM, "cache_control": CC}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": document, "cache_control": CC},
                    {"type": "text", "text": question},
                ],
            },
        ],
        "temperature": 0,
        "max_tokens": 60,
    }


class ArrivalClock(SimClock):
    """Simulated Unix time, advanced by arrivals; gateway and router read the same one.

    Requests are sent in arrival order, each once the previous one has met its endpoint's
    prompt cache (``accounted``), so every request meets the cache at its own arrival
    time while they still overlap in flight.
    """

    def __init__(self) -> None:
        super().__init__()
        self.accounted = 0
        self._changed = asyncio.Event()

    def account(self) -> None:
        self.accounted += 1
        self._changed.set()

    async def turn(self, index: int) -> None:
        """Wait until ``index`` requests have met a prompt cache."""
        while self.accounted < index:
            self._changed.clear()
            await self._changed.wait()


class CountingCache(ProviderPromptCache):
    """A provider cache that tells the clock when a request has met it."""

    __slots__ = ("_clock",)

    def __init__(self, clock: ArrivalClock) -> None:
        super().__init__()
        self._clock = clock

    def account(
        self, model: str, body: Mapping[str, Any], prompt_tokens: int, *, now: float
    ) -> PromptCacheResult:
        try:
            return super().account(model, body, prompt_tokens, now=now)
        finally:
            self._clock.account()


Send = Callable[[dict[str, Any]], Awaitable[tuple[Usage, float]]]


def via_client(client: Client) -> Send:
    """Send a body through ``client``: its usage, and its dollars (0 when unpriced)."""

    async def send(body: dict[str, Any]) -> tuple[Usage, float]:
        completion = await client.complete(**body)
        return completion.usage, completion.cost.usd if completion.cost else 0.0

    return send


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: prompt-cache tokens read and written, dollars, real seconds."""

    cached: int
    written: int
    cost: float
    seconds: float


def hit_rate(samples: Sequence[Sample]) -> float:
    """Read tokens over cacheable (read + written) tokens."""
    cached = sum(s.cached for s in samples)
    cacheable = cached + sum(s.written for s in samples)
    return cached / cacheable if cacheable else 0.0


async def replay(
    clock: ArrivalClock,
    arrivals: Sequence[Arrival],
    send: Send,
    *,
    workers: int = WORKERS,
    before_send: Callable[[], None] | None = None,
) -> list[Sample]:
    """Every arrival sent through ``send`` by ``workers`` tasks, in arrival order, each at
    its own simulated time; the run starts a day after the last, so no cache entry
    survives from one run to the next. ``before_send`` looks at the router before each."""
    queue = iter(enumerate(arrivals))
    clock.now += 86_400.0
    clock.accounted = 0
    start = clock.now
    samples: list[Sample] = []

    async def worker() -> None:
        for index, (at, body) in queue:
            await clock.turn(index)
            clock.now = start + at
            if before_send is not None:
                before_send()
            began = time.perf_counter()
            usage, cost = await send(body)
            seconds = time.perf_counter() - began
            samples.append(Sample(usage.cached_tokens, usage.cache_write_tokens, cost, seconds))

    await asyncio.gather(*(worker() for _ in range(workers)))
    return samples
