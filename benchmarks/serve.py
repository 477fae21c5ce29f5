"""``limpet serve`` end to end over loopback: the latency of a cache hit through the proxy
(p50, p99; one caller, keep-alive) and requests per second of a hit-heavy workload at
concurrency 100, with the proxy in its own process in front of a FakeGateway.

The baseline is the same request sent straight to the fake gateway (no proxy, no cache):
what a hit through the proxy costs beside the cheapest possible upstream. LiteLLM's
proxy is compared only when it is installed.

Target: p50 hit <= 1 ms end to end.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import socket
import statistics
import sys
import time
from typing import Any

import aiohttp

from benchmarks._common import Figure, emit
from benchmarks._harness import command_line
from limpet.testing import FakeGateway

MODEL = "openai/gpt-5-mini"
CONCURRENCY = 100
PROMPTS = 200
_READY_DEADLINE = 30.0


def ask(index: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You answer questions about tide pools, briefly."},
            {"role": "user", "content": f"Question {index}: what lives under a rock?"},
        ],
        "temperature": 0,
    }


async def start_proxy(upstream: str, port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "limpet", "serve", "--upstream", upstream, "--port", str(port),
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    give_up = time.monotonic() + _READY_DEADLINE
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < give_up:
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return process
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    process.kill()
    raise RuntimeError("limpet serve did not answer in time")


async def latencies_ms(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    """Milliseconds of ``n`` sequential identical calls."""
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        async with session.post(url, json=ask(0)) as response:
            await response.read()
        samples.append((time.perf_counter() - started) * 1e3)
    return samples


async def requests_per_second(session: aiohttp.ClientSession, url: str, n: int) -> float:
    """Throughput of ``n`` calls over ``PROMPTS`` requests, ``CONCURRENCY`` at a time."""
    rng = random.Random(7)
    queue = [ask(rng.randrange(PROMPTS)) for _ in range(n)]

    async def worker() -> None:
        while queue:
            async with session.post(url, json=queue.pop()) as response:
                await response.read()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return n / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def main(n: int, burst: int) -> None:
    async with FakeGateway(endpoints=("a",)) as gateway:
        port = free_port()
        proxy = await start_proxy(gateway.base_url("a"), port)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        direct = f"{gateway.base_url('a')}/chat/completions"
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                for index in range(PROMPTS):  # warm: the workload below is all hits
                    async with session.post(url, json=ask(index)) as response:
                        assert response.headers["X-Limpet-Cache"] == "miss"
                await latencies_ms(session, url, n // 10)
                through = await latencies_ms(session, url, n)
                straight = await latencies_ms(session, direct, n)
                rps = await requests_per_second(session, url, burst)
                direct_rps = await requests_per_second(session, direct, burst)
        finally:
            proxy.terminate()
            await proxy.wait()
        # The gateway also answered the direct calls: the rest are the proxy's.
        upstream_calls = gateway.endpoint("a").calls - n - burst
    p50, p99 = percentile(through, 0.5), percentile(through, 0.99)
    emit(
        "serve",
        [
            Figure(
                figure="hit through limpet serve, p50 ms (loopback)",
                unit="ms",
                limpet=p50,
                baseline=statistics.median(straight),
                baseline_name="straight to the fake gateway, no cache",
                target="<= 1 ms",
                met=p50 <= 1.0,
            ),
            Figure(
                figure="hit through limpet serve, p99 ms (loopback)",
                unit="ms",
                limpet=p99,
                baseline=percentile(straight, 0.99),
                baseline_name="straight to the fake gateway, no cache",
            ),
            Figure(
                figure=f"hit-heavy requests/s through limpet serve, concurrency {CONCURRENCY}",
                unit="req/s",
                limpet=rps,
                baseline=direct_rps,
                baseline_name="straight to the fake gateway, no cache",
            ),
        ],
        calls=n,
        burst=burst,
        prompts=PROMPTS,
        upstream_calls_of_the_proxy=upstream_calls,
        litellm_proxy=(
            "installed, not compared yet"
            if importlib.util.find_spec("litellm") is not None
            else "not installed: not compared"
        ),
    )


if __name__ == "__main__":
    parser = command_line(__doc__)
    parser.add_argument("--n", type=int, default=5_000, help="sequential hits timed")
    parser.add_argument("--burst", type=int, default=20_000, help="calls at concurrency 100")
    args = parser.parse_args()
    if args.quick:
        args.n, args.burst = 500, 2_000
    asyncio.run(main(args.n, args.burst))
