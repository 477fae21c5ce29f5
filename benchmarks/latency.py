"""Latency by cache status on the demo's workload (a cold burst, then Zipf repeats, tens
of concurrent tasks) against the FakeGateway, limpet beside the same workload without it.
"""

from __future__ import annotations

import asyncio
import statistics

from benchmarks._common import Figure, Plot, Series, emit
from benchmarks._harness import command_line, percentile
from limpet.cli.demo import run_demo

STATUSES = ("hit", "coalesced", "miss")


async def main(requests: int, latency: float) -> None:
    plain, limpet = await run_demo(
        requests=requests, concurrency=32, burst=requests // 6, latency=latency
    )
    by_status = {
        s: limpet.latencies_by_status[s] for s in STATUSES if limpet.latencies_by_status[s]
    }
    emit(
        "latency",
        [
            Figure(
                figure="p50 latency, cache hits (demo workload)",
                unit="ms",
                limpet=percentile(by_status["hit"], 0.50),
                baseline=plain.percentile(50),
                baseline_name="every call upstream",
            ),
            Figure(
                figure="p50 latency, all calls (demo workload)",
                unit="ms",
                limpet=limpet.percentile(50),
                baseline=plain.percentile(50),
                baseline_name="without limpet",
            ),
            Figure(
                figure="p99 latency, all calls (demo workload)",
                unit="ms",
                limpet=limpet.percentile(99),
                baseline=plain.percentile(99),
                baseline_name="without limpet",
            ),
        ],
        plot=Plot(
            kind="bar",
            title=f"Latency by cache status (upstream latency {latency * 1000:.0f} ms)",
            ylabel="ms (log)",
            yscale="log",
            series={
                "p50": Series(
                    x=[*by_status, "without limpet"],
                    y=[statistics.median(v) for v in by_status.values()] + [plain.percentile(50)],
                ),
                "p99": Series(
                    x=[*by_status, "without limpet"],
                    y=[percentile(v, 0.99) for v in by_status.values()] + [plain.percentile(99)],
                ),
            },
        ),
        calls={s: len(v) for s, v in by_status.items()},
        upstream_latency_s=latency,
    )


if __name__ == "__main__":
    args = command_line(__doc__).parse_args()
    asyncio.run(main(120 if args.quick else 600, 0.08))
