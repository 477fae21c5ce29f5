"""A cold cache-miss storm across P processes sharing Memcached: upstream calls, follower
lag and wall time, limpet vs coalescing off (the Redis case is ``storm``).

Memcached has no pub/sub, so followers poll the leader's lease and notice with a backoff
(5 ms doubling to 100 ms): their lag behind the leader is bounded by that poll.

Targets: 1 upstream call for 8 processes x 125 callers; followers within 150 ms (p99).
"""

from __future__ import annotations

import asyncio

from benchmarks._common import Figure, emit
from benchmarks._harness import command_line
from benchmarks._memcached import memcached_url
from benchmarks.storm import UPSTREAM_LATENCY, across, follower_lag_p99_ms
from limpet.testing import FakeGateway

LAG_TARGET_MS = 150


async def main(url: str, processes: int, per_process: int) -> None:
    async with FakeGateway(endpoints=("a",), latency=UPSTREAM_LATENCY) as gateway:
        calls, wall, reports = await across(gateway, url, processes, per_process, coalesce=True)
        off_calls, off_wall, _ = await across(gateway, url, processes, per_process, coalesce=False)
    lag = follower_lag_p99_ms(reports)
    emit(
        "memcached_storm",
        [
            Figure(
                figure=f"upstream calls, {processes} processes x {per_process} callers, Memcached",
                unit="calls",
                limpet=calls,
                baseline=off_calls,
                baseline_name="coalescing off",
                target="1",
                met=calls == 1,
            ),
            Figure(
                figure="follower completion after the leader's, p99 (Memcached, polled)",
                unit="ms",
                limpet=lag,
                target=f"<= {LAG_TARGET_MS} ms",
                met=lag <= LAG_TARGET_MS,
            ),
            Figure(
                figure=f"wall time, {processes} processes x {per_process} callers, Memcached",
                unit="s",
                limpet=wall,
                baseline=off_wall,
                baseline_name="coalescing off",
            ),
        ],
        upstream_latency_s=UPSTREAM_LATENCY,
    )


if __name__ == "__main__":
    args = command_line(__doc__, memcached=True).parse_args()
    with memcached_url(args.memcached) as url:
        if args.quick:
            asyncio.run(main(url, 2, 25))
        else:
            asyncio.run(main(url, 8, 125))
