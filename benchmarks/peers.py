"""limpet beside its peers in one run, against one local upstream: client CPU per request
on the miss path (distinct requests at concurrency 50 and 500), CPU per cache hit, and
the upstream calls of a cold 1,000-caller storm.

Contenders: a bare pooled aiohttp session (POST and JSON decode: the floor), limpet's
``Client``, ``openai.AsyncOpenAI`` (no cache) and LiteLLM ``acompletion`` with its
in-memory cache. The last two are measured when installed (``pip install -e
'.[bench-peers]'``); otherwise the run says which were skipped.

Each contender runs in a process of its own, so one's imports, threads and heap never
weigh on another's figures, and the FakeGateway upstream runs in this parent process, so
its CPU is never counted: client CPU per request is the child's ``time.process_time()``
over a phase divided by its calls. Rounds alternate the contenders; the median is kept.

Targets: limpet's miss path <= 1.3x the bare session's CPU; 1 upstream call in the storm.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from benchmarks._common import Figure, Plot, Series, emit
from limpet.testing import FakeGateway

# What every contender sends upstream; not a gpt-5 model: LiteLLM refuses temperature 0 there.
MODEL = "openai/gpt-4.1-mini"
API_KEY = "sk-bench"
STORM_LATENCY = 0.5  # the upstream's answer time in the storm, as in benchmarks/storm.py
HIT_SET = 100  # distinct requests the hit phase cycles over: fits LiteLLM's default 200 entries
INSTALL_HINT = "pip install -e '.[bench-peers]'"

Messages = list[dict[str, str]]
Call = Callable[[Messages], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Measurement:
    """One phase of one contender: how many calls, and the CPU and wall time they took."""

    calls: int
    cpu_s: float
    wall_s: float

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_s / self.calls * 1e6 if self.calls else 0.0

    def to_json(self) -> list[float]:
        return [self.calls, self.cpu_s, self.wall_s]

    @classmethod
    def from_json(cls, data: Sequence[float]) -> Measurement:
        calls, cpu_s, wall_s = data
        return cls(int(calls), cpu_s, wall_s)


def median_cpu_us(samples: Sequence[Measurement]) -> float:
    """The median over rounds of the CPU microseconds per call."""
    return statistics.median(m.cpu_us_per_call for m in samples)


# ---------------------------------------------------------------- contenders (child side)


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

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))
    return Measurement(len(requests), time.process_time() - cpu, time.perf_counter() - wall)


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


# ---------------------------------------------------------------- orchestration (parent side)


@dataclass(slots=True)
class PeerResult:
    """Everything measured for one contender, over every round."""

    miss: dict[int, list[Measurement]] = field(default_factory=dict)
    hit: list[Measurement] = field(default_factory=list)
    hit_upstream_calls: int = 0
    storm_calls: int = 0
    storm_wall_s: float = 0.0


async def spawn(peer: Peer, base_url: str, task: Mapping[str, Any]) -> dict[str, Any]:
    """Run one task of ``peer`` in a child process and return the JSON it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.peers",
        "--child",
        orjson.dumps({"peer": peer.name, "base_url": base_url, **task}).decode(),
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{peer.name}: child exited with {process.returncode}")
    result: dict[str, Any] = orjson.loads(stdout)
    return result


async def measure_round(
    gateway: FakeGateway, peer: Peer, result: PeerResult, task: Mapping[str, Any]
) -> None:
    gateway.reset()
    out = await spawn(peer, gateway.base_url("fast"), task)
    for concurrency, sample in out["miss"].items():
        result.miss.setdefault(int(concurrency), []).append(Measurement.from_json(sample))
    if out["hit"] is not None:
        result.hit.append(Measurement.from_json(out["hit"]))
    result.hit_upstream_calls += gateway.total_calls - out["sent"]
    sent = {r.get("model") for r in gateway.endpoint("fast").requests}
    if sent != {MODEL}:
        raise RuntimeError(f"{peer.name} sent model {sent}, not {MODEL!r}: not like for like")


async def measure(
    peers: Sequence[Peer], calls: int, rounds: int, concurrencies: Sequence[int], callers: int
) -> dict[str, PeerResult]:
    results = {peer.name: PeerResult() for peer in peers}
    async with FakeGateway(endpoints=("fast", "storm")) as gateway:
        gateway.endpoint("storm").latency = STORM_LATENCY
        for r in range(rounds):
            for peer in peers:
                _log(f"round {r + 1}/{rounds}: {peer.name}")
                task = {"tag": f"round {r}", "calls": calls, "concurrencies": concurrencies}
                await measure_round(gateway, peer, results[peer.name], task)
        for peer in peers:
            _log(f"storm of {callers}: {peer.name}")
            gateway.reset()
            out = await spawn(peer, gateway.base_url("storm"), {"tag": "cold", "storm": callers})
            results[peer.name].storm_calls = gateway.total_calls
            results[peer.name].storm_wall_s = out["wall_s"]
    return results


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- report


def figures(results: Mapping[str, PeerResult], callers: int) -> list[Figure]:
    """limpet beside the floor (with the target) and beside each peer that was measured."""
    limpet = results["limpet"]
    rows = []
    for concurrency, samples in limpet.miss.items():
        us = median_cpu_us(samples)
        for name in ("bare aiohttp", "AsyncOpenAI", "LiteLLM"):
            if name not in results:
                continue
            floor = name == "bare aiohttp"
            base = median_cpu_us(results[name].miss[concurrency])
            rows.append(
                Figure(
                    figure=f"miss path, client CPU per request, concurrency {concurrency}",
                    unit="us",
                    limpet=us,
                    baseline=base,
                    baseline_name="bare aiohttp session" if floor else name,
                    target="<= 1.3x" if floor else "",
                    met=us <= 1.3 * base if floor else None,
                )
            )
    peer = results.get("LiteLLM")
    rows.append(
        Figure(
            figure="cache hit, client CPU per call (in memory)",
            unit="us",
            limpet=median_cpu_us(limpet.hit),
            baseline=median_cpu_us(peer.hit) if peer else None,
            baseline_name="LiteLLM in-memory cache" if peer else "",
        )
    )
    storm_peers = [n for n in ("LiteLLM", "AsyncOpenAI") if n in results] or ["bare aiohttp"]
    return rows + [
        Figure(
            figure=f"upstream calls, {callers:,} identical cold requests at once",
            unit="calls",
            limpet=limpet.storm_calls,
            baseline=results[name].storm_calls,
            baseline_name=name,
            target="1",
            met=limpet.storm_calls == 1,
        )
        for name in storm_peers
    ]


def cpu_plot(results: Mapping[str, PeerResult]) -> Plot:
    series = {}
    for name, result in results.items():
        x: list[float | str] = [f"miss, concurrency {c}" for c in result.miss]
        y = [median_cpu_us(samples) for samples in result.miss.values()]
        if result.hit:
            x.append("cache hit")
            y.append(median_cpu_us(result.hit))
        series[name] = Series(x=x, y=y)
    return Plot(
        kind="bar",
        title="Client CPU per request, one local upstream",
        ylabel="us CPU per request (log)",
        yscale="log",
        series=series,
    )


def summary(result: PeerResult) -> dict[str, Any]:
    """The medians and every sample of one contender, for ``details``."""

    def phase(samples: Sequence[Measurement]) -> dict[str, Any]:
        return {
            "cpu_us_per_call": median_cpu_us(samples),
            "wall_s": statistics.median(m.wall_s for m in samples),
            "samples": [m.to_json() for m in samples],
        }

    return {
        "miss": {str(c): phase(samples) for c, samples in result.miss.items()},
        "hit": phase(result.hit) if result.hit else None,
        "hit_phase_upstream_calls": result.hit_upstream_calls,
        "storm_upstream_calls": result.storm_calls,
        "storm_wall_s": result.storm_wall_s,
    }


async def main(calls: int, rounds: int, concurrencies: Sequence[int], callers: int) -> None:
    missing = missing_peers(PEERS, lambda module: importlib.util.find_spec(module) is not None)
    if missing:
        _log(skipped_note(missing))
    peers = [p for p in PEERS if p.name not in missing]
    results = await measure(peers, calls, rounds, concurrencies, callers)
    emit(
        "peers",
        figures(results, callers),
        plot=cpu_plot(results),
        skipped=skipped_note(missing),
        contenders={name: summary(result) for name, result in results.items()},
        calls_per_phase=calls,
        rounds=rounds,
        storm_callers=callers,
        storm_upstream_latency_s=STORM_LATENCY,
        hit_set=HIT_SET,
        method=(
            "each contender in its own process against one FakeGateway in the parent; "
            "client CPU = the child's process_time per call, median over rounds; "
            "LiteLLM runs with its in-memory cache on in every phase, as limpet does"
        ),
    )


def run_child(task: Mapping[str, Any]) -> None:
    """The child side of :func:`spawn`: run one task, print its JSON on stdout."""
    peer = next(p for p in PEERS if p.name == task["peer"])
    if "storm" in task:
        job = child_storm(peer, task["base_url"], task["tag"], task["storm"])
    else:
        job = child_round(peer, task["base_url"], task["tag"], task["calls"], task["concurrencies"])
    sys.stdout.write(orjson.dumps(asyncio.run(job)).decode() + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    parser.add_argument("--calls", type=int, default=2_000, help="per phase and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callers", type=int, default=1_000, help="in the storm")
    parser.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(orjson.loads(args.child))
    else:
        if args.quick:
            args.calls, args.rounds, args.callers = 200, 1, 200
        asyncio.run(main(args.calls, args.rounds, (50, 500), args.callers))
