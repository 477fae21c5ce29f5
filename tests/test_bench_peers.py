"""The peers benchmark's parts, without running the benchmark: the arithmetic, the report of
peers that are not installed, the rows and plot it emits, and one limpet round and storm
against the FakeGateway (counts only, never times)."""

from __future__ import annotations

import gc
import math

import pytest
from benchmarks._common import Plot
from benchmarks._peer_clients import (
    INSTALL_HINT,
    PEERS,
    TASK_FLOOR,
    GcTime,
    Measurement,
    child_round,
    child_storm,
    median_cpu_us,
    median_round_ratio,
    missing_peers,
    skipped_note,
)
from benchmarks.peers import PeerResult, cpu_plot, figures
from benchmarks.run import discover

from limpet.testing import FakeGateway

LIMPET = next(p for p in PEERS if p.name == "limpet")


def result(
    miss_us: float, hit_us: float | None, storm_calls: int, gc_us: float = 0.0
) -> PeerResult:
    """A contender measured over one round of 1,000 calls per phase (``gc_us`` of each
    miss the collector's)."""
    return PeerResult(
        miss={
            c: [Measurement(1000, miss_us * c / 50 / 1000, 1.0, gc_us / 1000)] for c in (50, 500)
        },
        hit=[] if hit_us is None else [Measurement(1000, hit_us / 1000, 0.1)],
        storm_calls=storm_calls,
    )


def test_cpu_per_call_is_cpu_seconds_over_calls_in_microseconds() -> None:
    assert Measurement(calls=2000, cpu_s=1.36, wall_s=9.0).cpu_us_per_call == pytest.approx(680)
    assert Measurement(calls=0, cpu_s=0.0, wall_s=0.0).cpu_us_per_call == 0.0


def test_a_measurement_survives_the_trip_through_a_child_process() -> None:
    m = Measurement(calls=200, cpu_s=0.0519, wall_s=0.283, gc_s=0.002)
    assert Measurement.from_json(m.to_json()) == m
    assert m.gc_us_per_call == pytest.approx(10)


def test_the_collectors_passes_are_timed_while_installed_and_only_then() -> None:
    with GcTime() as passes:
        assert passes in gc.callbacks
        gc.collect()
    assert passes not in gc.callbacks
    assert passes.seconds > 0
    timed = passes.seconds
    gc.collect()
    assert passes.seconds == timed


def test_the_median_over_rounds_ignores_one_disturbed_round() -> None:
    rounds = [Measurement(1000, s, 1.0) for s in (0.68, 3.0, 0.70)]
    assert median_cpu_us(rounds) == pytest.approx(700)


def test_the_ratio_round_by_round_is_not_moved_by_the_machines_drift_between_rounds() -> None:
    # The machine runs twice as slow in the last round: both contenders' CPU doubles.
    floor = [Measurement(1000, s, 1.0) for s in (0.10, 0.11, 0.20)]
    limpet = [Measurement(1000, s, 1.0) for s in (0.12, 0.132, 0.24)]
    assert median_cpu_us(limpet) / median_cpu_us(floor) == pytest.approx(1.2)
    assert median_round_ratio(limpet, floor) == pytest.approx(1.2)
    # One round disturbed on one side only is outvoted, where a median of each side
    # (taken from different rounds) would not be.
    limpet = [Measurement(1000, s, 1.0) for s in (0.12, 0.30, 0.24)]
    assert median_round_ratio(limpet, floor) == pytest.approx(1.2)
    assert median_cpu_us(limpet) / median_cpu_us(floor) == pytest.approx(24 / 11)
    with pytest.raises(ValueError):
        median_round_ratio(limpet, floor[:2])  # rounds that do not pair up


def test_peers_without_their_package_are_named_with_how_to_install_them() -> None:
    missing = missing_peers(PEERS, lambda module: module != "litellm")
    assert missing == ["LiteLLM"]
    assert skipped_note(missing) == (
        f"not measured, not installed: LiteLLM (install: {INSTALL_HINT})"
    )
    assert missing_peers(PEERS, lambda module: True) == []
    assert skipped_note([]) == ""


def test_the_floor_and_limpet_are_always_measured() -> None:
    assert missing_peers(PEERS, lambda module: False) == ["AsyncOpenAI", "LiteLLM"]


def test_rows_put_limpet_beside_the_floor_with_the_target_and_beside_each_peer() -> None:
    results = {
        "bare aiohttp": result(170, None, 1000, gc_us=10),
        TASK_FLOOR: result(200, None, 1000),
        "limpet": result(680, 12, 1, gc_us=80),
        "AsyncOpenAI": result(3270, None, 1000),
        "LiteLLM": result(4800, 1200, 1000),
    }
    rows = figures(results, callers=1000)
    floor = rows[0]
    assert (floor.baseline_name, floor.target, floor.met) == (
        "bare aiohttp session",
        "<= 1.3x",
        False,
    )
    assert floor.ratio == pytest.approx(4.0)
    paired = rows[1]  # the same, round by round
    assert "same round" in paired.figure and paired.unit == "x"
    assert paired.limpet == pytest.approx(4.0) and paired.baseline is None
    own = rows[2]  # the same, the collector's passes taken out of both
    assert "garbage collector" in own.figure and (own.target, own.met) == ("", None)
    assert own.limpet == pytest.approx(600) and own.baseline == pytest.approx(160)
    in_tasks = rows[3]  # the floor with the price of a task per call, no target
    assert "task of its own" in in_tasks.baseline_name
    assert in_tasks.baseline == pytest.approx(200)
    assert (in_tasks.target, in_tasks.met) == ("", None)
    assert [r.baseline_name for r in rows[4:6]] == ["AsyncOpenAI", "LiteLLM"]
    assert "concurrency 500" in rows[6].figure
    hit = rows[12]
    assert hit.limpet == pytest.approx(12)
    assert hit.baseline == pytest.approx(1200)
    storms = rows[13:]
    assert [(r.limpet, r.baseline, r.baseline_name, r.met) for r in storms] == [
        (1, 1000, "LiteLLM", True),
        (1, 1000, "AsyncOpenAI", True),
    ]


def test_without_the_peers_the_rows_still_report_limpet_against_the_floor() -> None:
    results = {"bare aiohttp": result(170, None, 1000), "limpet": result(200, 12, 2)}
    rows = figures(results, callers=1000)
    assert [r.figure.split(",")[0] for r in rows] == [
        "miss path",
        "miss path",
        "miss path without the garbage collector's passes",
        "miss path",
        "miss path",
        "miss path without the garbage collector's passes",
        "cache hit",
        "upstream calls",
    ]
    assert rows[0].met is True  # 200 <= 1.3 x 170
    assert rows[6].baseline is None
    assert (rows[7].baseline_name, rows[7].met) == ("bare aiohttp", False)


def test_the_plot_has_a_bar_per_contender_and_a_hit_bar_only_where_there_is_a_cache() -> None:
    plot = cpu_plot({"limpet": result(680, 12, 1), "AsyncOpenAI": result(3270, None, 1000)})
    assert Plot.from_json(plot.to_json()) == plot
    assert list(plot.series["limpet"].x)[-1] == "cache hit"
    assert "cache hit" not in plot.series["AsyncOpenAI"].x
    assert math.isclose(plot.series["AsyncOpenAI"].y[0], 3270)


def test_the_runner_finds_the_peers_benchmark() -> None:
    assert "peers" in discover()


async def test_a_limpet_round_misses_every_distinct_request_and_then_only_hits() -> None:
    async with FakeGateway(endpoints=("a",)) as gateway:
        out = await child_round(LIMPET, gateway.base_url("a"), "t", calls=30, concurrencies=(5, 9))
        assert set(out["miss"]) == {"5", "9"}
        assert Measurement.from_json(out["miss"]["9"]).calls == 30
        assert Measurement.from_json(out["hit"]).calls == 30
        # Every request sent upstream was a warm-up, a miss or a hit-set priming: no hit was.
        assert gateway.total_calls == out["sent"] == 20 + 30 + 30 + 100


async def test_a_limpet_storm_makes_one_upstream_call() -> None:
    async with FakeGateway(endpoints=("a",), latency=0.05) as gateway:
        await child_storm(LIMPET, gateway.base_url("a"), "t", callers=50)
        assert gateway.total_calls == 1


async def test_the_floor_in_tasks_sends_every_call_upstream_as_the_floor_does() -> None:
    in_tasks = next(p for p in PEERS if p.name == TASK_FLOOR)
    async with FakeGateway(endpoints=("a",)) as gateway:
        out = await child_round(in_tasks, gateway.base_url("a"), "t", calls=30, concurrencies=(5,))
        assert out["hit"] is None  # no cache: no hit phase
        assert gateway.total_calls == out["sent"] == 20 + 30
