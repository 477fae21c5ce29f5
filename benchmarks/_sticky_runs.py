"""The runs of ``sticky``: the RAG workload through each router, and the bounded-load
sweeps, each on the same simulated clock and FakeGateway endpoints."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks._blind_routers import RandomRouter, RoundRobinRouter
from benchmarks._harness import API_KEY
from benchmarks._rag import (
    LATENCY,
    TENANT_PERIOD,
    WORKERS,
    Arrival,
    ArrivalClock,
    CountingCache,
    hit_rate,
    replay,
    via_client,
    workload,
)
from limpet import Client, Endpoint, RetryConfig
from limpet.config import RoutingConfig
from limpet.routing.sticky import Router, StickyRouter
from limpet.testing import FakeGateway

PERIODS = (30.0, 60.0, 120.0, 210.0, 300.0, 600.0)  # the sensitivity sweep
HOT_WORKERS = 64  # enough in flight (16 per endpoint) for e, not the floor, to bind
HOT_LATENCY = 0.4  # slower answers, so that the hot runs really keep that many in flight
BUSY_LATENCY = 0.05  # for the floor sweep: ~14 of the 16 in flight, in bursts
HOT_SHARE = 0.3
EXTREME_SHARE = 0.7  # one prefix taking most of the traffic: the bound's real job
# Each sweep picks the tightest bound whose hit rate is within this of no bound at all.
HIT_RATE_TOLERANCE = 0.01
UNBOUNDED = 10**6
ENDPOINTS = ("a", "b", "c", "d")
E_GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
FLOOR_GRID = (1, 2, 4, 8, 16, 32)


# --- Running one strategy ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    hit_rate: float
    cost: float
    p50_ms: float
    load: float  # p95 of max/mean in-flight over arrivals (sticky only)
    in_flight: float  # mean calls in flight over arrivals (sticky only)
    spills: int

    def row(self) -> dict[str, Any]:
        return {
            "hit_rate": round(self.hit_rate, 4),
            "cost_usd": round(self.cost, 4),
            "p50_ms": round(self.p50_ms, 1),
            "p95_max_over_mean_in_flight": round(self.load, 3),
            "mean_in_flight": round(self.in_flight, 1),
            "spills": self.spills,
        }


async def run(
    name: str,
    gateway: FakeGateway,
    clock: ArrivalClock,
    make_router: Callable[[list[Endpoint]], Router],
    arrivals: Sequence[Arrival],
    *,
    workers: int = WORKERS,
) -> Outcome:
    gateway.reset()
    endpoints = [Endpoint(n, gateway.base_url(n), api_key=API_KEY) for n in gateway.endpoints]
    router = make_router(endpoints)
    retry = RetryConfig(max_attempts=1)
    client = Client(router=router, cache=None, coalesce=False, retry=retry)
    balance: list[float] = []
    totals: list[int] = []

    def look_at_load() -> None:
        if isinstance(router, StickyRouter):
            loads = [s.in_flight for s in router.status().values()]
            totals.append(sum(loads))
            if sum(loads) >= workers // 2:  # past the start-up
                balance.append(max(loads) * len(loads) / sum(loads))

    try:
        send = via_client(client)
        samples = await replay(clock, arrivals, send, workers=workers, before_send=look_at_load)
    finally:
        await client.aclose()  # closes the router too
    return Outcome(
        name=name,
        hit_rate=hit_rate(samples),
        cost=sum(s.cost for s in samples),
        p50_ms=statistics.median(s.seconds for s in samples) * 1000,
        load=statistics.quantiles(balance, n=20)[-1] if len(balance) > 1 else 1.0,
        in_flight=statistics.fmean(totals) if totals else 0.0,
        spills=router.stats.spilled if isinstance(router, StickyRouter) else 0,
    )


def sticky(clock: ArrivalClock, **config: Any) -> Callable[[list[Endpoint]], Router]:
    return lambda eps: StickyRouter(eps, config=RoutingConfig(**config), clock=clock)


# --- The runs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measured:
    """Every run of the benchmark, by what it answers."""

    ideal: Outcome
    chosen: Outcome
    robin: Outcome
    drawn: Outcome
    floors: dict[float, Outcome]  # load_floor -> outcome; UNBOUNDED: no bound
    slacks: dict[float, Outcome]  # max_overload -> outcome, under the hot tenant
    unbounded_hot: Outcome
    defaults: Outcome
    extreme_default: Outcome
    extreme_unbounded: Outcome
    pace: dict[str, dict[str, float]]
    requests: int  # in the ordinary workload


async def floor_sweep(
    gateway: FakeGateway, clock: ArrivalClock, bodies: list[Arrival], grid: Sequence[int]
) -> dict[float, Outcome]:
    """The floor binds at low load: swept on the ordinary workload, e out of play, with
    slower answers so that ordinary bursts pile up on an endpoint."""
    for endpoint in gateway.endpoints.values():
        endpoint.latency = BUSY_LATENCY
    floors: dict[float, Outcome] = {
        floor: await run(
            f"floor={floor}",
            gateway,
            clock,
            sticky(clock, load_floor=floor, max_overload=0.0),
            bodies,
        )
        for floor in grid
    }
    floors[UNBOUNDED] = await run(
        "no bound", gateway, clock, sticky(clock, load_floor=UNBOUNDED), bodies
    )
    return floors


async def hot_runs(
    gateway: FakeGateway, clock: ArrivalClock, hot: list[Arrival], grid: Sequence[float]
) -> tuple[dict[float, Outcome], Outcome, Outcome]:
    """e binds at high load under a hot key: swept there, the floor out of play; then no
    bound and the defaults on the same arrivals."""
    for endpoint in gateway.endpoints.values():
        endpoint.latency = HOT_LATENCY
    slacks: dict[float, Outcome] = {
        e: await run(
            f"e={e}",
            gateway,
            clock,
            sticky(clock, max_overload=e, load_floor=1),
            hot,
            workers=HOT_WORKERS,
        )
        for e in grid
    }
    unbounded = sticky(clock, load_floor=UNBOUNDED)
    no_bound = await run("no bound", gateway, clock, unbounded, hot, workers=HOT_WORKERS)
    defaults = await run("defaults", gateway, clock, sticky(clock), hot, workers=HOT_WORKERS)
    return slacks, no_bound, defaults


async def extreme_runs(
    gateway: FakeGateway, clock: ArrivalClock, extreme: list[Arrival]
) -> tuple[Outcome, Outcome]:
    """The defaults and no bound under one prefix taking most of the traffic."""
    default = await run("defaults", gateway, clock, sticky(clock), extreme, workers=HOT_WORKERS)
    unbounded = sticky(clock, load_floor=UNBOUNDED)
    no_bound = await run("no bound", gateway, clock, unbounded, extreme, workers=HOT_WORKERS)
    for endpoint in gateway.endpoints.values():
        endpoint.latency = LATENCY
    return default, no_bound


async def by_pace(
    gateway: FakeGateway,
    single: FakeGateway,
    clock: ArrivalClock,
    size: tuple[int, int],
    periods: Sequence[float],
) -> dict[str, dict[str, float]]:
    """How the saving depends on the pace: tenants asking faster or slower than above."""
    pace = {}
    for period in periods:
        paced = workload(*size, period=period, seed=3)
        runs = {
            "ideal": await run("ideal", single, clock, sticky(clock), paced),
            "sticky": await run("sticky", gateway, clock, sticky(clock), paced),
            "round-robin": await run("round-robin", gateway, clock, RoundRobinRouter, paced),
        }
        base = runs["round-robin"].cost
        pace[f"{period:g}"] = {
            **{f"{name} hit_rate": round(o.hit_rate, 4) for name, o in runs.items()},
            "sticky cost / round-robin": round(runs["sticky"].cost / base, 4),
            "ideal cost / round-robin": round(runs["ideal"].cost / base, 4),
        }
    return pace


async def measure(tenants: int, questions: int, quick: bool) -> Measured:
    bodies = workload(tenants, questions)
    hot = workload(tenants, questions, hot_share=HOT_SHARE, seed=2)
    clock = ArrivalClock()

    def counting() -> CountingCache:
        return CountingCache(clock)

    async with (
        FakeGateway(
            endpoints=ENDPOINTS, latency=LATENCY, prompt_cache=counting, clock=clock
        ) as gateway,
        FakeGateway(
            endpoints=("only",), latency=LATENCY, prompt_cache=counting, clock=clock
        ) as single,
    ):
        ideal = await run("ideal", single, clock, sticky(clock), bodies)
        chosen = await run("sticky", gateway, clock, sticky(clock), bodies)
        robin = await run("round-robin", gateway, clock, RoundRobinRouter, bodies)
        drawn = await run("random", gateway, clock, RandomRouter, bodies)
        floors = await floor_sweep(gateway, clock, bodies, (1, 4, 8, 16) if quick else FLOOR_GRID)
        e_grid = (0.0, 0.25, 1.0, 2.0) if quick else E_GRID
        slacks, unbounded_hot, defaults = await hot_runs(gateway, clock, hot, e_grid)
        extreme = workload(tenants, questions, hot_share=EXTREME_SHARE, seed=4)
        extreme_default, extreme_unbounded = await extreme_runs(gateway, clock, extreme)
        periods = (60.0, TENANT_PERIOD, 600.0) if quick else PERIODS
        pace = await by_pace(gateway, single, clock, (tenants, questions), periods)
    return Measured(
        ideal, chosen, robin, drawn, floors, slacks, unbounded_hot, defaults,
        extreme_default, extreme_unbounded, pace, len(bodies),
    )  # fmt: skip
