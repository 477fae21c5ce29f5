"""A cold cache-miss storm: upstream calls and wall time for N concurrent identical requests,
in one process and across P processes sharing Redis, limpet vs coalescing off.

Targets: 1 upstream call for N = 1,000 in one process; 1 call for 8 processes x 125
callers; followers complete within 50 ms (p99) of the leader.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from benchmarks._common import Figure, Plot, Series, emit, scratch_prefix
from limpet import Client, Endpoint
from limpet.testing import FakeGateway
from limpet.testing.storm import STORM_MESSAGES, STORM_MODEL, WorkerReport, run_storm

UPSTREAM_LATENCY = 0.5


async def in_process(gateway: FakeGateway, callers: int, coalesce: bool) -> tuple[int, float]:
    gateway.reset()
    endpoint = Endpoint("a", gateway.base_url("a"), api_key="sk-bench")
    async with Client(endpoints=[endpoint], coalesce=coalesce) as client:
        started = time.perf_counter()
        await asyncio.gather(
            *(
                client.complete(model=STORM_MODEL, messages=STORM_MESSAGES, temperature=0)
                for _ in range(callers)
            )
        )
        wall = time.perf_counter() - started
    return gateway.total_calls, wall


async def across(
    gateway: FakeGateway, redis_url: str, processes: int, callers: int, coalesce: bool
) -> tuple[int, float, list[WorkerReport]]:
    gateway.reset()
    async with scratch_prefix(redis_url, "storm") as prefix:
        started = time.perf_counter()
        reports = await run_storm(
            processes,
            base_url=gateway.base_url("a"),
            redis_url=redis_url,
            callers=callers,
            prefix=prefix,
            coalesce=coalesce,
        )
        wall = time.perf_counter() - started
    errors = [e for r in reports for e in r.errors]
    if errors:
        raise RuntimeError(f"storm workers saw errors: {errors[:5]}")
    return gateway.total_calls, wall, reports


def follower_lag_p99_ms(reports: list[WorkerReport]) -> float:
    """p99 of (follower finish - leader finish), over every caller that did not lead."""
    leader_done = min(t for r in reports for t in r.finished_at.get("miss", []))
    lags = sorted(
        (t - leader_done) * 1000
        for r in reports
        for status, times in r.finished_at.items()
        if status != "miss"
        for t in times
    )
    return lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else 0.0


async def main(callers: int, processes: int, per_process: int, redis_url: str) -> None:
    async with FakeGateway(endpoints=("a",), latency=UPSTREAM_LATENCY) as gateway:
        one_calls, one_wall = await in_process(gateway, callers, coalesce=True)
        off_calls, off_wall = await in_process(gateway, callers, coalesce=False)
        multi_calls, multi_wall, reports = await across(
            gateway, redis_url, processes, per_process, coalesce=True
        )
        multi_off_calls, multi_off_wall, _ = await across(
            gateway, redis_url, processes, per_process, coalesce=False
        )
    lag = follower_lag_p99_ms(reports)
    emit(
        "storm",
        [
            Figure(
                figure=f"upstream calls, {callers} identical cold requests, one process",
                unit="calls",
                limpet=one_calls,
                baseline=off_calls,
                baseline_name="coalescing off",
                target="1",
                met=one_calls == 1,
            ),
            Figure(
                figure=f"upstream calls, {processes} processes x {per_process} callers, Redis",
                unit="calls",
                limpet=multi_calls,
                baseline=multi_off_calls,
                baseline_name="coalescing off",
                target="1",
                met=multi_calls == 1,
            ),
            Figure(
                figure="follower completion after the leader's, p99 (across processes)",
                unit="ms",
                limpet=lag,
                target="<= 50 ms",
                met=lag <= 50,
            ),
            Figure(
                figure=f"wall time, {processes} processes x {per_process} callers",
                unit="s",
                limpet=multi_wall,
                baseline=multi_off_wall,
                baseline_name="coalescing off",
            ),
            Figure(
                figure=f"wall time, {callers} callers, one process",
                unit="s",
                limpet=one_wall,
                baseline=off_wall,
                baseline_name="coalescing off",
            ),
        ],
        plot=Plot(
            kind="bar",
            title="Upstream calls under a cold-start storm",
            ylabel="upstream calls (log)",
            yscale="log",
            series={
                "limpet": Series(x=one_process_and_fleet(processes), y=[one_calls, multi_calls]),
                "coalescing off": Series(
                    x=one_process_and_fleet(processes), y=[off_calls, multi_off_calls]
                ),
            },
        ),
        upstream_latency_s=UPSTREAM_LATENCY,
    )


def one_process_and_fleet(processes: int) -> list[str]:
    return ["one process", f"{processes} processes + Redis"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    parser.add_argument(
        "--redis", default=os.environ.get("LIMPET_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args()
    if args.quick:
        asyncio.run(main(100, 2, 25, args.redis))
    else:
        asyncio.run(main(1000, 8, 125, args.redis))
