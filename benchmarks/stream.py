"""Streaming: followers' time to first chunk beside the leader's, a late joiner's, and
replay throughput of a cached stream in chunks per second, in one run.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from benchmarks._common import Figure, emit
from benchmarks._harness import command_line
from limpet import Client, Endpoint
from limpet.pipeline.stream import CompletionStream
from limpet.testing import FakeEndpoint, FakeGateway

UPSTREAM_LATENCY = 0.2
REQUEST: dict[str, Any] = {
    "model": "anthropic/claude-sonnet-4.6",
    "messages": [{"role": "user", "content": "Stream me a long answer about limpets."}],
    "temperature": 0,
    "max_tokens": 400,
}


async def first_chunk_after(stream: CompletionStream, started: float) -> float:
    """Seconds from ``started`` to this stream's first chunk; then drains it."""
    await anext(stream)
    elapsed = time.perf_counter() - started
    async for _ in stream:
        pass
    return elapsed


async def with_followers(client: Client, followers: int) -> tuple[float, list[float]]:
    """The leader's time to first chunk, and each follower's, all arriving together."""
    started = time.perf_counter()
    leader = asyncio.create_task(first_chunk_after(client.stream(**REQUEST), started))
    joined = [
        asyncio.create_task(first_chunk_after(client.stream(**REQUEST), started))
        for _ in range(followers)
    ]
    return await leader, list(await asyncio.gather(*joined))


async def late_joiner(client: Client, ep: FakeEndpoint) -> float:
    """Time to first chunk of a follower joining while the upstream stream is held
    half-way."""
    await client.invalidate()
    ep.pause_stream(after_chunks=5)
    early = client.stream(**REQUEST)
    for _ in range(5):
        await anext(early)
    late_started = time.perf_counter()
    late = asyncio.create_task(first_chunk_after(client.stream(**REQUEST), late_started))
    ep.resume_stream()
    async for _ in early:
        pass
    return await late


async def replays_of(client: Client, replays: int) -> tuple[int, float]:
    """Chunks read, and chunks per second, replaying a cached stream in full again and
    again."""
    chunks = 0
    replay_started = time.perf_counter()
    for _ in range(replays):
        async for _ in client.stream(**REQUEST):
            chunks += 1
    return chunks, chunks / (time.perf_counter() - replay_started)


async def main(followers: int, replays: int) -> None:
    async with FakeGateway(endpoints=("a",), latency=UPSTREAM_LATENCY) as gateway:
        ep = gateway.endpoint("a")
        async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))]) as client:
            leader_ttfc, follower_ttfc = await with_followers(client, followers)
            assert ep.calls == 1
            late_ttfc = await late_joiner(client, ep)
            assert ep.calls == 2
            chunks, replay_rate = await replays_of(client, replays)
            assert ep.calls == 2
    follower_p50 = statistics.median(follower_ttfc)
    emit(
        "stream",
        [
            Figure(
                figure=f"time to first chunk, {followers} followers arriving with the leader (p50)",
                unit="ms",
                limpet=follower_p50 * 1000,
                baseline=leader_ttfc * 1000,
                baseline_name="the leader's",
                target="~1x the leader's",
                met=follower_p50 <= leader_ttfc * 1.1,
            ),
            Figure(
                figure="time to first chunk, a follower joining mid-stream",
                unit="ms",
                limpet=late_ttfc * 1000,
                baseline=leader_ttfc * 1000,
                baseline_name="the leader's",
            ),
            Figure(
                figure="replay of a cached stream",
                unit="chunks/s",
                limpet=replay_rate,
            ),
        ],
        upstream_latency_s=UPSTREAM_LATENCY,
        chunks_per_stream=chunks // replays,
    )


if __name__ == "__main__":
    args = command_line(__doc__).parse_args()
    asyncio.run(main(followers=20 if args.quick else 100, replays=50 if args.quick else 500))
