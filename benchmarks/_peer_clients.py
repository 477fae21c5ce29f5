"""The contenders of ``peers`` and what each does in its own process (the child side):
one client per peer behind a common ``call(messages)``, the phases of a round, the storm,
and the CPU and wall time they took."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from benchmarks._harness import API_KEY

# What every contender sends upstream; not a gpt-5 model: LiteLLM refuses temperature 0 there.
MODEL = "openai/gpt-4.1-mini"
HIT_SET = 100  # distinct requests the hit phase cycles over: fits LiteLLM's default 200 entries
INSTALL_HINT = "pip install -e '.[bench-peers]'"
TASK_FLOOR = "bare aiohttp, a task per call"  # the floor, its call in a task of its own

Messages = list[dict[str, str]]
Call = Callable[[Messages], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Measurement:
    """One phase of one contender: how many calls, the CPU and wall time they took, and
    the part of that CPU the garbage collector took (its passes, timed by ``gc.callbacks``)."""

    calls: int
    cpu_s: float
    wall_s: float
    gc_s: float = 0.0

    @property
    def cpu_us_per_call(self) -> float:
        return self._us_per_call(self.cpu_s)

    @property
    def gc_us_per_call(self) -> float:
        return self._us_per_call(self.gc_s)

    def _us_per_call(self, seconds: float) -> float:
        return seconds / self.calls * 1e6 if self.calls else 0.0

    def to_json(self) -> list[float]:
        return [self.calls, self.cpu_s, self.wall_s, self.gc_s]

    @classmethod
    def from_json(cls, data: Sequence[float]) -> Measurement:
        calls, cpu_s, wall_s, gc_s = data
        return cls(int(calls), cpu_s, wall_s, gc_s)


class GcTime:
    """The CPU seconds the garbage collector's passes take while it is installed (a
    ``gc.callbacks`` entry: ``with GcTime() as passes: ...; passes.seconds``)."""

    __slots__ = ("_started", "seconds")

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: Mapping[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.seconds += time.process_time() - self._started

    def __enter__(self) -> GcTime:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self)


def median_cpu_us(samples: Sequence[Measurement]) -> float:
    """The median over rounds of the CPU microseconds per call."""
    return statistics.median(m.cpu_us_per_call for m in samples)


def median_round_ratio(samples: Sequence[Measurement], bases: Sequence[Measurement]) -> float:
    """The median over rounds of one contender's CPU per call over another's in the same
    round: the machine's drift from round to round weighs on both sides of each ratio."""
    pairs = zip(samples, bases, strict=True)
    return statistics.median(m.cpu_us_per_call / b.cpu_us_per_call for m, b in pairs)


def median_own_cpu_us(samples: Sequence[Measurement]) -> float:
    """The median over rounds of the CPU microseconds per call that were not the garbage
    collector's passes."""
    return statistics.median(m.cpu_us_per_call - m.gc_us_per_call for m in samples)


@contextlib.asynccontextmanager
async def bare_aiohttp(base_url: str) -> AsyncIterator[Call]:
    """The floor: one pooled session, an orjson body in, an orjson decode out."""
    import aiohttp

    url = f"{base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:

        async def call(messages: Messages) -> object:
            body = orjson.dumps({"model": MODEL, "messages": messages, "temperature": 0})
            async with session.post(url, data=body, headers=headers) as response:
                response.raise_for_status()
                return orjson.loads(await response.read())

        yield call


@contextlib.asynccontextmanager
async def bare_aiohttp_in_tasks(base_url: str) -> AsyncIterator[Call]:
    """The floor's call in a task of its own per request: what any single-flight design
    pays at the least for an upstream call that outlives a cancelled caller (limpet's
    flight is such a task), so the report can tell that price from limpet's own."""
    async with bare_aiohttp(base_url) as call:

        async def in_task(messages: Messages) -> object:
            return await asyncio.ensure_future(call(messages))

        yield in_task


@contextlib.asynccontextmanager
async def limpet_client(base_url: str) -> AsyncIterator[Call]:
    """limpet as shipped: in-memory cache, single-flight, retries."""
    from limpet import Client, Endpoint

    async with Client(endpoints=[Endpoint("up", base_url, api_key=API_KEY)]) as client:

        async def call(messages: Messages) -> object:
            return await client.complete(model=MODEL, messages=messages, temperature=0)

        yield call


@contextlib.asynccontextmanager
async def async_openai(base_url: str) -> AsyncIterator[Call]:
    """The OpenAI SDK as shipped: no cache, its own retries."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=API_KEY)
    try:

        async def call(messages: Messages) -> object:
            # Plain dicts, as users pass them (the SDK's TypedDicts are for type checkers).
            request: dict[str, Any] = {"model": MODEL, "messages": messages, "temperature": 0}
            return await client.chat.completions.create(**request)

        yield call
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def litellm_cached(base_url: str) -> AsyncIterator[Call]:
    """LiteLLM ``acompletion`` with its in-memory cache on, quiet and offline."""
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no cost-map fetch
    import litellm
    from litellm.caching.caching import Cache

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.cache = Cache(type="local")

    async def call(messages: Messages) -> object:
        return await litellm.acompletion(
            model=f"openai/{MODEL}",  # the openai/ provider prefix is stripped before sending
            messages=messages,
            api_base=base_url,
            api_key=API_KEY,
            temperature=0,
            caching=True,
        )

    yield call


@dataclass(frozen=True, slots=True)
class Peer:
    """A contender: its label, the package it needs (None: always there), and whether it
    has a response cache (its hit path is measured)."""

    name: str
    module: str | None
    cached: bool
    open: Callable[[str], contextlib.AbstractAsyncContextManager[Call]]


PEERS = (
    Peer("bare aiohttp", None, False, bare_aiohttp),
    Peer(TASK_FLOOR, None, False, bare_aiohttp_in_tasks),
    Peer("limpet", None, True, limpet_client),
    Peer("AsyncOpenAI", "openai", False, async_openai),
    Peer("LiteLLM", "litellm", True, litellm_cached),
)


def missing_peers(peers: Sequence[Peer], installed: Callable[[str], bool]) -> list[str]:
    """The names of the peers whose package is not installed."""
    return [p.name for p in peers if p.module is not None and not installed(p.module)]


def skipped_note(missing: Sequence[str]) -> str:
    """What the report says about peers it could not measure; ``""`` when none."""
    if not missing:
        return ""
    return f"not measured, not installed: {', '.join(missing)} (install: {INSTALL_HINT})"


def prompts(tag: str, n: int) -> list[Messages]:
    """``n`` distinct requests: every one a cache miss the first time it is sent."""
    return [
        [
            {"role": "system", "content": "You answer questions about marine biology, briefly."},
            {"role": "user", "content": f"{tag} #{i}: how does a limpet hold on to a rock?"},
        ]
        for i in range(n)
    ]


async def run_calls(call: Call, requests: Sequence[Messages], concurrency: int) -> Measurement:
    """Send ``requests`` from ``concurrency`` workers; the CPU and wall time they took."""
    pending = iter(requests)

    async def worker() -> None:
        for messages in pending:
            await call(messages)

    # The harness's own garbage (the requests just built, the phase before) is collected
    # first, so that no contender's window pays for a collection the harness caused.
    gc.collect()
    with GcTime() as passes:
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return Measurement(len(requests), cpu, wall, passes.seconds)


async def child_round(
    peer: Peer, base_url: str, tag: str, calls: int, concurrencies: Sequence[int]
) -> dict[str, Any]:
    """One round of one contender: warm-up, misses at each concurrency, then hits."""
    sent = 0
    out: dict[str, Any] = {"miss": {}, "hit": None}
    async with peer.open(base_url) as call:
        warm_up = prompts(f"{tag} warm-up", max(20, calls // 10))
        await run_calls(call, warm_up, concurrencies[0])
        sent += len(warm_up)
        if peer.cached:  # a first hit can cost imports (LiteLLM's does): not in the figures
            await run_calls(call, warm_up[-10:], concurrencies[0])
        for concurrency in concurrencies:
            requests = prompts(f"{tag} miss c={concurrency}", calls)
            out["miss"][str(concurrency)] = (await run_calls(call, requests, concurrency)).to_json()
            sent += calls
        if peer.cached:
            hot = prompts(f"{tag} hit", HIT_SET)
            await run_calls(call, hot, concurrencies[0])  # stored now; hits from here on
            sent += len(hot)
            repeats = [hot[i % len(hot)] for i in range(calls)]
            out["hit"] = (await run_calls(call, repeats, concurrencies[0])).to_json()
    out["sent"] = sent
    return out


async def child_storm(peer: Peer, base_url: str, tag: str, callers: int) -> dict[str, Any]:
    """``callers`` identical cold requests at once through one fresh client."""
    messages = prompts(f"{tag} storm", 1)[0]
    async with peer.open(base_url) as call:
        started = time.perf_counter()
        await asyncio.gather(*(call(messages) for _ in range(callers)))
        return {"wall_s": time.perf_counter() - started}
