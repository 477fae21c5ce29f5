"""``limpet demo``: one realistic workload, with and without limpet, against the FakeGateway.

The workload is what a RAG or support front end sends: tens of concurrent tasks asking
questions drawn from a pool where a few are popular (a Zipf-like tail), plus a cold-start
burst of one identical question. Both runs see the same requests in the same order.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from limpet.client import Client
from limpet.config import Endpoint
from limpet.models import CacheStatus, Completion
from limpet.testing import FakeGateway

__all__ = ["DemoResult", "build_workload", "run_demo"]

MODEL = "anthropic/claude-sonnet-4.6"
SYSTEM_PROMPT = (
    "You are the support assistant of an online bookshop. Answer in two or three "
    "sentences, cite the policy section you rely on, and never invent order numbers. "
) * 6


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What one run of the workload measured."""

    label: str
    requests: int
    upstream_calls: int
    statuses: dict[str, int]
    latencies_ms: list[float]
    latencies_by_status: dict[str, list[float]]
    prompt_tokens: int
    cost_usd: float
    saved_usd: float
    wall_s: float

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
        return ordered[index]

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "upstream_calls": self.upstream_calls,
            "statuses": self.statuses,
            "p50_ms": self.percentile(50),
            "p99_ms": self.percentile(99),
            "prompt_tokens_billed": self.prompt_tokens,
            "cost_usd": self.cost_usd,
            "saved_usd": self.saved_usd,
            "wall_s": self.wall_s,
        }


def build_workload(
    requests: int, burst: int, questions: int, seed: int = 7
) -> list[list[dict[str, Any]]]:
    """Message lists: a burst of one question, then Zipf-distributed questions."""
    rng = random.Random(seed)
    pool = [f"Question {i}: what is your policy on case {i * 37 % 101}?" for i in range(questions)]
    weights = [1.0 / (rank + 1) for rank in range(questions)]
    asked = [pool[0]] * burst + rng.choices(pool, weights=weights, k=requests - burst)
    return [
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
        for question in asked
    ]


async def run_demo(
    *,
    requests: int = 400,
    concurrency: int = 32,
    burst: int = 64,
    questions: int = 80,
    latency: float = 0.08,
) -> tuple[DemoResult, DemoResult]:
    """Run the workload without limpet (no cache, no coalescing) and with its defaults."""
    workload = build_workload(requests, burst, questions)
    async with FakeGateway(endpoints=("openrouter",), latency=latency) as gateway:
        endpoint = Endpoint("openrouter", gateway.base_url("openrouter"), api_key="sk-demo")

        def plain() -> Client:
            return Client(endpoints=[endpoint], cache=None, coalesce=False)

        def limpet() -> Client:
            return Client(endpoints=[endpoint])

        results = []
        for label, make in (("without limpet", plain), ("with limpet", limpet)):
            gateway.reset()
            results.append(await _run(label, make, workload, burst, concurrency, gateway))
    return results[0], results[1]


async def _run(
    label: str,
    make_client: Callable[[], Client],
    workload: Sequence[list[dict[str, Any]]],
    burst: int,
    concurrency: int,
    gateway: FakeGateway,
) -> DemoResult:
    completions: list[Completion] = []
    latencies: list[float] = []
    by_status: dict[str, list[float]] = {status.value: [] for status in CacheStatus}

    async def ask(client: Client, messages: list[dict[str, Any]]) -> None:
        started = time.perf_counter()
        completion = await client.complete(
            model=MODEL, messages=messages, temperature=0, max_tokens=200
        )
        elapsed = (time.perf_counter() - started) * 1000
        latencies.append(elapsed)
        by_status[completion.cache.value].append(elapsed)
        completions.append(completion)

    async def worker(client: Client, queue: asyncio.Queue[list[dict[str, Any]]]) -> None:
        while not queue.empty():
            await ask(client, queue.get_nowait())

    began = time.perf_counter()
    async with make_client() as client:
        # The cold-start storm: every instance asks the same question at once.
        await asyncio.gather(*(ask(client, messages) for messages in workload[:burst]))
        queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
        for messages in workload[burst:]:
            queue.put_nowait(messages)
        await asyncio.gather(*(worker(client, queue) for _ in range(concurrency)))
    wall = time.perf_counter() - began

    statuses = {status.value: 0 for status in CacheStatus}
    for completion in completions:
        statuses[completion.cache.value] += 1
    return DemoResult(
        label=label,
        requests=len(completions),
        upstream_calls=gateway.total_calls,
        statuses=statuses,
        latencies_ms=latencies,
        latencies_by_status=by_status,
        prompt_tokens=sum(
            c.usage.prompt_tokens
            for c in completions
            if c.cache in (CacheStatus.MISS, CacheStatus.BYPASS)
        ),
        cost_usd=sum(c.cost.usd for c in completions if c.cost),
        saved_usd=sum(c.cost.saved_usd for c in completions if c.cost),
        wall_s=wall,
    )


def render(plain: DemoResult, limpet: DemoResult, concurrency: int) -> str:
    """The demo's table, for a terminal."""
    saved_share = limpet.saved_usd / plain.cost_usd if plain.cost_usd else 0.0
    s = limpet.statuses
    rows = [
        ("requests", f"{plain.requests}", f"{limpet.requests}"),
        ("upstream calls", f"{plain.upstream_calls}", f"{limpet.upstream_calls}"),
        (
            "  hit / coalesced / miss",
            "-",
            f"{s['hit']} / {s['coalesced']} / {s['miss']}",
        ),
        (
            "hit rate",
            "-",
            f"{(s['hit'] + s['coalesced']) / max(limpet.requests, 1):.1%}",
        ),
        ("p50 latency", f"{plain.percentile(50):.1f} ms", f"{limpet.percentile(50):.2f} ms"),
        ("p99 latency", f"{plain.percentile(99):.1f} ms", f"{limpet.percentile(99):.1f} ms"),
        ("prompt tokens billed", f"{plain.prompt_tokens:,}", f"{limpet.prompt_tokens:,}"),
        ("dollars spent", f"${plain.cost_usd:.4f}", f"${limpet.cost_usd:.4f}"),
        ("dollars saved", "-", f"${limpet.saved_usd:.4f} ({saved_share:.0%})"),
        ("wall time", f"{plain.wall_s:.2f} s", f"{limpet.wall_s:.2f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [
        f"limpet demo: {plain.requests} requests from {concurrency} concurrent tasks "
        "(a cold-start burst, then repeats)",
        "against the built-in fake gateway; no network, no Redis.",
        "",
        f"{'':<{width}}  {'without limpet':>16}  {'with limpet':>18}",
    ]
    lines += [f"{name:<{width}}  {a:>16}  {b:>18}" for name, a, b in rows]
    return "\n".join(lines)
