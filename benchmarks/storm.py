"""A cold cache-miss storm: upstream calls and wall time for N concurrent identical requests,
in one process and across P processes sharing Redis, limpet vs coalescing off.

Targets: 1 upstream call for N = 1,000 in one process; 1 call for 8 processes x 125
callers; followers complete within 50 ms (p99) of the leader.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from benchmarks._common import Figure, Plot, Series, emit
from benchmarks._harness import command_line, endpoint_of, scratch_prefix
from limpet import Client
from limpet.testing import FakeGateway
from limpet.testing.storm import STORM_MESSAGES, STORM_MODEL, WorkerReport, run_storm

UPSTREAM_LATENCY = 0.5


async def in_process(gateway: FakeGateway, callers: int, coalesce: bool) -> tuple[int, float]:
    gateway.reset()
    async with Client(endpoints=[endpoint_of(gateway)], coalesce=coalesce) as client:
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


@dataclass(frozen=True, slots=True)
class Storms:
    """Upstream calls and wall seconds of each storm, coalescing on and off."""

    callers: int
    processes: int
    per_process: int
    one: tuple[int, float]
    one_off: tuple[int, float]
    fleet: tuple[int, float]
    fleet_off: tuple[int, float]
    lag_ms: float


async def main(callers: int, processes: int, per_process: int, redis_url: str) -> None:
    async with FakeGateway(endpoints=("a",), latency=UPSTREAM_LATENCY) as gateway:
        one = await in_process(gateway, callers, coalesce=True)
        one_off = await in_process(gateway, callers, coalesce=False)
        multi_calls, multi_wall, reports = await across(
            gateway, redis_url, processes, per_process, coalesce=True
        )
        multi_off_calls, multi_off_wall, _ = await across(
            gateway, redis_url, processes, per_process, coalesce=False
        )
    storms = Storms(
        callers,
        processes,
        per_process,
        one,
        one_off,
        (multi_calls, multi_wall),
        (multi_off_calls, multi_off_wall),
        follower_lag_p99_ms(reports),
    )
    emit("storm", figures(storms), plot=plot(storms), upstream_latency_s=UPSTREAM_LATENCY)


def figures(s: Storms) -> list[Figure]:
    (one_calls, one_wall), (off_calls, off_wall) = s.one, s.one_off
    (multi_calls, multi_wall), (multi_off_calls, multi_off_wall) = s.fleet, s.fleet_off
    fleet = f"{s.processes} processes x {s.per_process} callers"
    return [
        Figure(
            figure=f"upstream calls, {s.callers} identical cold requests, one process",
            unit="calls",
            limpet=one_calls,
            baseline=off_calls,
            baseline_name="coalescing off",
            target="1",
            met=one_calls == 1,
        ),
        Figure(
            figure=f"upstream calls, {fleet}, Redis",
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
            limpet=s.lag_ms,
            target="<= 50 ms",
            met=s.lag_ms <= 50,
        ),
        Figure(
            figure=f"wall time, {fleet}",
            unit="s",
            limpet=multi_wall,
            baseline=multi_off_wall,
            baseline_name="coalescing off",
        ),
        Figure(
            figure=f"wall time, {s.callers} callers, one process",
            unit="s",
            limpet=one_wall,
            baseline=off_wall,
            baseline_name="coalescing off",
        ),
    ]


def plot(s: Storms) -> Plot:
    where = one_process_and_fleet(s.processes)
    return Plot(
        kind="bar",
        title="Upstream calls under a cold-start storm",
        ylabel="upstream calls (log)",
        yscale="log",
        series={
            "limpet": Series(x=where, y=[s.one[0], s.fleet[0]]),
            "coalescing off": Series(x=where, y=[s.one_off[0], s.fleet_off[0]]),
        },
    )


def one_process_and_fleet(processes: int) -> list[str]:
    return ["one process", f"{processes} processes + Redis"]


if __name__ == "__main__":
    args = command_line(__doc__, redis=True).parse_args()
    if args.quick:
        asyncio.run(main(100, 2, 25, args.redis))
    else:
        asyncio.run(main(1000, 8, 125, args.redis))
