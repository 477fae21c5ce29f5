"""Profiles of the miss and hit paths: cProfile top-15 tables, for the closing note of a
performance change (``python -m benchmarks._profile [--calls N] [--concurrency C]``); with
``--lines``, the Python lines each call executes instead (``benchmarks._lines``), beside a
bare aiohttp session's request: counted, so the same on any machine.

Not a benchmark (the runner skips ``_`` modules): it prints tables, not figures. The
FakeGateway runs in a thread of its own, with its own event loop, and cProfile profiles
only the thread that enables it, so the tables hold the client's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import aiohttp
import orjson

from benchmarks._lines import LineCount
from limpet import Client, Endpoint
from limpet.testing import FakeGateway

MODEL = "openai/gpt-4.1-mini"
TOP = 15


@contextmanager
def gateway_thread() -> Iterator[str]:
    """A FakeGateway serving on a loop in another thread; yields its base URL."""
    ready = threading.Event()
    stop: list[asyncio.Event] = []
    url: list[str] = []
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        async with FakeGateway(endpoints=("a",)) as gateway:
            url.append(gateway.base_url("a"))
            stop.append(asyncio.Event())
            ready.set()
            await stop[0].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    ready.wait()
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join()
        loop.close()


def messages(tag: str, i: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You answer questions about marine biology, briefly."},
        {"role": "user", "content": f"{tag} #{i}: how does a limpet hold on to a rock?"},
    ]


async def run_calls(call: Callable[[int], Awaitable[object]], n: int, concurrency: int) -> None:
    pending = iter(range(n))

    async def worker() -> None:
        for i in pending:
            await call(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def table(profile: cProfile.Profile, title: str) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(TOP)
    return f"## {title}\n{out.getvalue()}"


async def count_lines(client: Client, base_url: str, calls: int, concurrency: int) -> None:
    """Print the lines per call of limpet's miss and hit paths and of a bare aiohttp
    session's request (the miss path's floor), each after a warm-up."""
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:

        async def bare(i: int, tag: str = "bare") -> object:
            body = orjson.dumps({"model": MODEL, "messages": messages(tag, i), "temperature": 0})
            url = f"{base_url}/chat/completions"
            async with session.post(url, data=body, headers=headers) as response:
                response.raise_for_status()
                return orjson.loads(await response.read())

        async def miss(i: int, tag: str = "lines") -> object:
            return await client.complete(model=MODEL, messages=messages(tag, i), temperature=0)

        await run_calls(lambda i: bare(i, "bare warm-up"), 200, concurrency)
        with LineCount() as floor:
            await run_calls(bare, calls, concurrency)
        with LineCount() as limpet:
            await run_calls(miss, calls, concurrency)
        with LineCount() as hits:
            await run_calls(lambda i: miss(i % 100), calls, 1)
    print(f"miss path at concurrency {concurrency}, {calls} calls each")
    print(f"bare aiohttp session: {floor.per_call(calls):,.0f} Python lines per call\n")
    print(limpet.table(calls, "limpet miss path", TOP))
    print(hits.table(calls, "limpet in-memory hit (the floor: no Python line)", TOP))


async def main(calls: int, concurrency: int, lines: bool = False) -> None:
    with gateway_thread() as base_url:
        endpoint = Endpoint("a", base_url, api_key="sk-bench")
        async with Client(endpoints=[endpoint]) as client:
            if lines:
                await run_calls(
                    lambda i: client.complete(
                        model=MODEL, messages=messages("warm-up", i), temperature=0
                    ),
                    200,
                    concurrency,
                )
                await count_lines(client, base_url, calls, concurrency)
                return

            async def miss(i: int, tag: str = "miss") -> object:
                return await client.complete(model=MODEL, messages=messages(tag, i), temperature=0)

            async def hit(i: int) -> object:
                return await client.complete(
                    model=MODEL, messages=messages("hot", i % 100), temperature=0
                )

            await run_calls(lambda i: miss(i, "warm-up"), 200, concurrency)
            await run_calls(hit, 100, concurrency)
            profile = cProfile.Profile()
            profile.enable()
            await run_calls(miss, calls, concurrency)
            profile.disable()
            print(table(profile, f"miss path: {calls} calls at concurrency {concurrency}"))
            profile = cProfile.Profile()
            profile.enable()
            await run_calls(hit, calls * 5, 1)
            profile.disable()
            print(table(profile, f"hit path: {calls * 5} sequential in-memory hits"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--lines", action="store_true", help="count lines, not time")
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.concurrency, args.lines))
