"""Rate limits: distinct calls at high concurrency against an endpoint that admits 20 in
flight (and, second case, a requests-per-window budget), answering 429 with
``Retry-After`` and ``x-ratelimit-*`` beyond that.

Contenders, side by side in one run against one FakeGateway endpoint: limpet with no
configuration (the limit it learns), limpet with ``max_in_flight=20``, limpet with
admission off, ``openai.AsyncOpenAI`` with its default retries and LiteLLM
``acompletion`` with ``num_retries=3`` (the peers when installed: ``pip install -e
'.[bench-peers]'``; the run says when they are not). Figures: failed calls, 429s
received, and wall time against the ideal (calls x latency / 20).

The rate case keeps 600 requests a minute but over a 10 s window (100 per 10 s), so that
it fits in a run; the window's 429s say when its oldest request leaves it.

Targets (in-flight case): limpet learned, 0 failed calls and <= 2% of calls answered
429; with the cap, 0 429s; wall time <= 1.15x the ideal.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks._common import Figure, emit
from benchmarks._harness import API_KEY, command_line
from limpet.testing import FakeGateway

MODEL = "openai/gpt-4.1-mini"
IN_FLIGHT = 20
LATENCY = 0.1  # seconds per answer: the ideal is calls x LATENCY / IN_FLIGHT
RATE, RATE_WINDOW = 100, 10.0  # 600 requests a minute, over 10 s windows
INSTALL_HINT = "pip install -e '.[bench-peers]'"

Call = Callable[[str], Awaitable[object]]


@contextlib.asynccontextmanager
async def limpet_client(base_url: str, **options: Any) -> AsyncIterator[Call]:
    from limpet import Client, Endpoint

    cap = options.pop("max_in_flight", None)
    endpoint = Endpoint("up", base_url, api_key=API_KEY, max_in_flight=cap)
    async with Client(endpoints=[endpoint], cache=None, **options) as client:

        async def call(text: str) -> object:
            messages = [{"role": "user", "content": text}]
            return await client.complete(model=MODEL, messages=messages, temperature=0)

        yield call


@contextlib.asynccontextmanager
async def bare_floor(base_url: str) -> AsyncIterator[Call]:
    """A pooled aiohttp session behind a semaphore of 20: the wall-time floor of this
    setup (the gateway shares the process), with no retries, caching or parsing."""
    import aiohttp

    gate = asyncio.Semaphore(IN_FLIGHT)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(base_url.rstrip("/") + "/", headers=headers) as session:

        async def call(text: str) -> object:
            body = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
            async with gate, session.post("chat/completions", json=body) as response:
                response.raise_for_status()
                return await response.json()

        yield call


@contextlib.asynccontextmanager
async def async_openai(base_url: str) -> AsyncIterator[Call]:
    """The OpenAI SDK as shipped: its default retries (2), honouring ``retry-after-ms``."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=API_KEY)
    try:

        async def call(text: str) -> object:
            request: dict[str, Any] = {
                "model": MODEL,
                "messages": [{"role": "user", "content": text}],
                "temperature": 0,
            }
            return await client.chat.completions.create(**request)

        yield call
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def litellm_retrying(base_url: str) -> AsyncIterator[Call]:
    """LiteLLM ``acompletion`` with ``num_retries=3``, quiet and offline."""
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True

    async def call(text: str) -> object:
        return await litellm.acompletion(
            model=f"openai/{MODEL}",
            messages=[{"role": "user", "content": text}],
            api_base=base_url,
            api_key=API_KEY,
            temperature=0,
            num_retries=3,
        )

    yield call


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    module: str | None  # the package it needs; None: always there
    open: Callable[[str], contextlib.AbstractAsyncContextManager[Call]]
    cases: tuple[str, ...] = ("in-flight", "rate")


CONTENDERS = (
    Contender("bare aiohttp, 20 at once", None, bare_floor, ("in-flight",)),
    Contender("limpet learned", None, limpet_client),
    Contender("limpet max_in_flight=20", None, lambda url: limpet_client(url, max_in_flight=20)),
    Contender("limpet admission off", None, lambda url: limpet_client(url, admission=False)),
    Contender("AsyncOpenAI", "openai", async_openai),
    Contender("LiteLLM", "litellm", litellm_retrying),
)


@dataclass(frozen=True, slots=True)
class Row:
    """What one contender did in one case."""

    contender: str
    case: str
    calls: int
    failed: int
    rate_limited: int
    wall: float
    ideal: float

    @property
    def rate_limited_pct(self) -> float:
        return 100.0 * self.rate_limited / self.calls

    @property
    def slowdown(self) -> float:
        return self.wall / self.ideal


async def run_case(
    gateway: FakeGateway, contender: Contender, case: str, calls: int, concurrency: int
) -> Row:
    gateway.reset()
    endpoint = gateway.endpoint("up")
    if case == "in-flight":
        endpoint.limit(in_flight=IN_FLIGHT)
        ideal = calls * LATENCY / IN_FLIGHT
    else:
        endpoint.limit(requests=RATE, per=RATE_WINDOW)
        ideal = (calls - 1) // RATE * RATE_WINDOW + LATENCY  # each window's share at once
    texts = iter([f"{contender.name} {case} #{i}: how does a limpet grip?" for i in range(calls)])
    failed = 0
    async with contender.open(gateway.base_url("up")) as call:

        async def worker() -> None:
            nonlocal failed
            for text in texts:
                try:
                    await call(text)
                except Exception:
                    failed += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return Row(contender.name, case, calls, failed, endpoint.rate_limited, wall, ideal)


def figures_of(rows: Sequence[Row]) -> list[Figure]:
    by = {(row.contender, row.case): row for row in rows}
    learned, capped = (
        by[("limpet learned", "in-flight")],
        by[("limpet max_in_flight=20", "in-flight")],
    )
    off = by[("limpet admission off", "in-flight")]
    floor = by[("bare aiohttp, 20 at once", "in-flight")]
    figures = [
        Figure("in-flight 20: failed calls, limpet learned", "calls", learned.failed,
               off.failed, "admission off", "0", learned.failed == 0),
        Figure("in-flight 20: calls answered 429, limpet learned", "%", learned.rate_limited_pct,
               off.rate_limited_pct, "admission off", "<= 2%", learned.rate_limited_pct <= 2.0),
        Figure("in-flight 20: 429s, limpet max_in_flight=20", "calls", capped.rate_limited,
               off.rate_limited, "admission off", "0", capped.rate_limited == 0),
        Figure("in-flight 20: wall vs ideal, limpet learned", "x", learned.slowdown,
               floor.slowdown, "bare aiohttp at 20 in flight", "<= 1.15x",
               learned.slowdown <= 1.15),
        Figure("in-flight 20: wall vs ideal, limpet max_in_flight=20", "x", capped.slowdown,
               floor.slowdown, "bare aiohttp at 20 in flight", "<= 1.15x",
               capped.slowdown <= 1.15),
    ]  # fmt: skip
    for peer in ("AsyncOpenAI", "LiteLLM"):
        row = by.get((peer, "in-flight"))
        if row is not None:
            figures.append(
                Figure(f"in-flight 20: failed calls, limpet learned vs {peer}", "calls",
                       learned.failed, row.failed, peer, "0", learned.failed == 0)
            )  # fmt: skip
    rate = by.get(("limpet learned", "rate"))
    rate_off = by.get(("limpet admission off", "rate"))
    if rate is not None and rate_off is not None:
        figures.append(
            Figure("600 req/min: failed calls, limpet learned", "calls", rate.failed,
                   rate_off.failed, "admission off", "0", rate.failed == 0)
        )  # fmt: skip
    return figures


async def main(quick: bool) -> None:
    calls, concurrency = (400, 200) if quick else (2000, 500)
    rate_calls = 150 if quick else 300
    installed = [c for c in CONTENDERS if c.module is None or importlib.util.find_spec(c.module)]
    missing = [c.name for c in CONTENDERS if c not in installed]
    rows: list[Row] = []
    async with FakeGateway(endpoints=("up",), latency=LATENCY) as gateway:
        for case, n in (("in-flight", calls), ("rate", rate_calls)):
            for contender in (c for c in installed if case in c.cases):
                row = await run_case(gateway, contender, case, n, concurrency)
                print(row, file=sys.stderr)
                rows.append(row)
    note = f"not measured, not installed: {', '.join(missing)} ({INSTALL_HINT})" if missing else ""
    emit(
        "admission",
        figures_of(rows),
        rows=[{**asdict(row), "slowdown": row.slowdown} for row in rows],
        latency=LATENCY,
        in_flight=IN_FLIGHT,
        rate=f"{RATE} per {RATE_WINDOW:g} s",
        skipped=note,
    )


if __name__ == "__main__":
    parser = command_line(__doc__, quick_help="fewer calls, for a fast run")
    asyncio.run(main(parser.parse_args().quick))
