"""The chat soak's parts (``tests/integration/test_soak.py``): the oracle gateway, the
workload drawn from a seed, and a run of waves. The shared tier both Clients use and what
the test does to it are ``soak_adversity``'s (the embeddings soak's too), built by
``soak_tiers`` (Redis, signed Redis, a Redis Cluster, Memcached); the fixtures, the checks
and the test are in the test module."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from limpet import Client, Completion
from limpet.http.chunks import StreamChunk
from limpet.testing import FakeGateway
from limpet.testing.endpoint import FakeEndpoint
from limpet.testing.wire import Answer
from tests.integration.chat import ask
from tests.integration.soak_adversity import (
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

SEEDS = seeds((11, 23, 47))
TEXTS = 24  # each asked three ways (see ``prompts``): 72 distinct requests
WAVES = 8
CALLS_PER_WAVE = 36
HOT = 8  # the prompts most calls of a wave ask, so that identical calls overlap
LATENCY = 0.02  # seconds per upstream answer: calls overlap, waiters coalesce
TIMEOUTS = (0.001, 0.005, 0.02, 0.05)  # a ``timeout=`` that may or may not pass
# Fields that say how an answer travels, not what it is (``stream()`` adds them).
DELIVERY = frozenset({"stream", "stream_options"})

Kind = Literal["complete", "stream"]


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
        self.prompt_tokens: dict[str, int] = {}  # answer id -> its usage's prompt tokens

    def _answer(self, endpoint: FakeEndpoint, body: dict[str, Any]) -> tuple[Answer, float]:
        answer, latency = super()._answer(endpoint, body)
        assert answer.id not in self.asked, "the gateway reused an answer id"
        self.asked[answer.id] = fingerprint(body)
        self.text[answer.id] = answer.content
        self.produced_at[answer.id] = next(self.ticks)
        self.prompt_tokens[answer.id] = answer.usage["prompt_tokens"]
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


def draw(seed: int) -> list[Wave[Plan]]:
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
        kills = draw_kills(rng)
        faults = []
        if wave > 0 and rng.random() < 0.3:
            kind = rng.choice(("status", "refused", "drop", "drop_mid_stream", "stream_error"))
            faults.append((kind, rng.randrange(1, 4)))
        waves.append(Wave(plans, kills, faults, draw_outage(rng)))
    return waves


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

    async def wave(self, wave: Wave[Plan]) -> None:
        self.shared.next_wave()
        endpoint = self.gateway.endpoint("a")
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
        endpoint.clear_faults()  # those this wave's calls did not use up
