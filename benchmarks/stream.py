"""Streaming: followers' time to first chunk beside the leader's, a late joiner's, and
replay throughput of a cached stream in chunks per second, in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from benchmarks._common import Figure, emit
from limpet import Client, Endpoint
from limpet.pipeline.stream import CompletionStream
from limpet.testing import FakeGateway

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


async def main(followers: int, replays: int) -> None:
    async with FakeGateway(endpoints=("a",), latency=UPSTREAM_LATENCY) as gateway:
        ep = gateway.endpoint("a")
        async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))]) as client:
            # Followers that arrive with the leader.
            started = time.perf_counter()
            leader = asyncio.create_task(first_chunk_after(client.stream(**REQUEST), started))
            joined = [
                asyncio.create_task(first_chunk_after(client.stream(**REQUEST), started))
                for _ in range(followers)
            ]
            leader_ttfc = await leader
            follower_ttfc = await asyncio.gather(*joined)
            assert ep.calls == 1

            # A late joiner: the upstream stream is held half-way while it joins.
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
            late_ttfc = await late
            assert ep.calls == 2

            # Replay throughput: a cached stream, read in full, again and again.
            chunks = 0
            replay_started = time.perf_counter()
            for _ in range(replays):
                async for _ in client.stream(**REQUEST):
                    chunks += 1
            replay_rate = chunks / (time.perf_counter() - replay_started)
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    args = parser.parse_args()
    asyncio.run(main(followers=20 if args.quick else 100, replays=50 if args.quick else 500))
