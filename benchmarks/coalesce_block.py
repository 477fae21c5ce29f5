"""How long 100 coalesced callers of one 4 MB answer block the event loop, through
``client.complete`` against a local upstream that answers after 200 ms, beside what
one copy per waiter (an ``orjson`` round trip of the answer, the old way of keeping
waiters apart) costs the loop in the same run. Every caller reads ``content`` and
``message``; then each changes its own ``raw``, which no other caller may see.

Target: <= 50 ms blocked in total (every gap of the loop over 1 ms, added up), from the
first call to the last answer, the upstream answer's own parse and store included.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from benchmarks._common import Figure, emit
from benchmarks._loop import LoopMonitor
from limpet import CacheStatus, Client, Completion, Endpoint

TARGET_MS = 50.0
UPSTREAM_LATENCY = 0.2


def answer(size: int) -> dict[str, Any]:
    text = ("Limpets graze on algae and return to the same home scar at low tide. " * 64)[:1000]
    return {
        "id": "gen-big",
        "model": "openai/gpt-4.1-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text * (size // len(text))},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": size // 4, "total_tokens": 0},
    }


async def upstream(body: bytes) -> tuple[web.AppRunner, str]:
    async def chat(_: web.Request) -> web.Response:
        await asyncio.sleep(UPSTREAM_LATENCY)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1"


async def main(callers: int, size: int) -> None:
    big = answer(size)
    runner, url = await upstream(orjson.dumps(big))
    request: dict[str, Any] = {
        "model": "openai/gpt-4.1-mini",
        "messages": [{"role": "user", "content": "Tell me everything about limpets."}],
        "temperature": 0,
    }
    try:
        async with Client(endpoints=[Endpoint("up", url, api_key="sk-bench")]) as client:

            async def caller() -> Completion:
                completion = await client.complete(**request)
                assert len(completion.content or "") > size // 2 and completion.message
                return completion

            async with LoopMonitor() as monitor:
                served = await asyncio.gather(*(caller() for _ in range(callers)))
            statuses = [c.cache for c in served]
            assert statuses.count(CacheStatus.MISS) == 1, statuses
            assert statuses.count(CacheStatus.COALESCED) == callers - 1
            for completion in served:  # each changes its own copy; nobody sees another's
                completion.raw["choices"][0]["message"]["content"] = "mine alone"
                completion.message["role"] = "changed"
            served[0].raw.clear()
            assert all(c.raw and c.content == "mine alone" for c in served[1:])
    finally:
        await runner.cleanup()

    # The baseline, in this run: one orjson round trip of the answer per waiter.
    started = time.thread_time()  # CPU time, as the monitor counts
    for _ in range(callers - 1):
        orjson.loads(orjson.dumps(big))
    copies_ms = (time.thread_time() - started) * 1e3

    emit(
        "coalesce_block",
        [
            Figure(
                figure=f"loop blocked, {callers} coalesced callers of a "
                f"{size / 1e6:.0f} MB answer (total)",
                unit="ms",
                limpet=monitor.blocked_ms,
                baseline=copies_ms,
                baseline_name="one orjson round trip per waiter",
                target=f"<= {TARGET_MS:g} ms",
                met=monitor.blocked_ms <= TARGET_MS,
            ),
            Figure(
                figure="longest single loop block in that run",
                unit="ms",
                limpet=monitor.longest_ms,
            ),
        ],
        callers=callers,
        answer_bytes=len(orjson.dumps(big)),
        upstream_latency_s=UPSTREAM_LATENCY,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--bytes", type=int, default=4_000_000)
    args = parser.parse_args()
    asyncio.run(main(args.callers, args.bytes))
