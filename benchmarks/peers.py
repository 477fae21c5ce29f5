"""limpet beside its peers in one run, against one local upstream: client CPU per request
on the miss path (distinct requests at concurrency 50 and 500), CPU per cache hit, and
the upstream calls of a cold 1,000-caller storm.

Contenders: a bare pooled aiohttp session (POST and JSON decode: the floor), the same
with each call in a task of its own (the least an upstream call that outlives a cancelled
caller costs, as limpet's single-flight does), limpet's ``Client``, ``openai.AsyncOpenAI``
(no cache) and LiteLLM ``acompletion`` with its in-memory cache. The last two are
measured when installed (``pip install -e '.[bench-peers]'``); otherwise the run says
which were skipped.

Each contender runs in a process of its own, so one's imports, threads and heap never
weigh on another's figures, and the FakeGateway upstream runs in this parent process, so
its CPU is never counted: client CPU per request is the child's ``time.process_time()``
over a phase divided by its calls. Rounds alternate the contenders; the median is kept.
limpet's ratio to the floor is also taken round by round (the median of the rounds'
ratios), which the machine's drift from one round to the next does not move.

Targets: limpet's miss path <= 1.3x the bare session's CPU; 1 upstream call in the storm.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from benchmarks._common import Figure, Plot, Series, emit
from benchmarks._harness import command_line
from benchmarks._peer_clients import (
    HIT_SET,
    MODEL,
    PEERS,
    TASK_FLOOR,
    Measurement,
    Peer,
    child_round,
    child_storm,
    median_cpu_us,
    median_own_cpu_us,
    median_round_ratio,
    missing_peers,
    skipped_note,
)
from limpet.testing import FakeGateway

STORM_LATENCY = 0.5  # the upstream's answer time in the storm, as in benchmarks/storm.py

# ---------------------------------------------------------------- orchestration (parent side)


@dataclass(slots=True)
class PeerResult:
    """Everything measured for one contender, over every round."""

    miss: dict[int, list[Measurement]] = field(default_factory=dict)
    hit: list[Measurement] = field(default_factory=list)
    hit_upstream_calls: int = 0
    storm_calls: int = 0
    storm_wall_s: float = 0.0


async def spawn(peer: Peer, base_url: str, task: Mapping[str, Any]) -> dict[str, Any]:
    """Run one task of ``peer`` in a child process and return the JSON it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.peers",
        "--child",
        orjson.dumps({"peer": peer.name, "base_url": base_url, **task}).decode(),
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{peer.name}: child exited with {process.returncode}")
    result: dict[str, Any] = orjson.loads(stdout)
    return result


async def measure_round(
    gateway: FakeGateway, peer: Peer, result: PeerResult, task: Mapping[str, Any]
) -> None:
    gateway.reset()
    out = await spawn(peer, gateway.base_url("fast"), task)
    for concurrency, sample in out["miss"].items():
        result.miss.setdefault(int(concurrency), []).append(Measurement.from_json(sample))
    if out["hit"] is not None:
        result.hit.append(Measurement.from_json(out["hit"]))
    result.hit_upstream_calls += gateway.total_calls - out["sent"]
    sent = {r.get("model") for r in gateway.endpoint("fast").requests}
    if sent != {MODEL}:
        raise RuntimeError(f"{peer.name} sent model {sent}, not {MODEL!r}: not like for like")


async def measure(
    peers: Sequence[Peer], calls: int, rounds: int, concurrencies: Sequence[int], callers: int
) -> dict[str, PeerResult]:
    results = {peer.name: PeerResult() for peer in peers}
    async with FakeGateway(endpoints=("fast", "storm")) as gateway:
        gateway.endpoint("storm").latency = STORM_LATENCY
        for r in range(rounds):
            for peer in peers:
                _log(f"round {r + 1}/{rounds}: {peer.name}")
                task = {"tag": f"round {r}", "calls": calls, "concurrencies": concurrencies}
                await measure_round(gateway, peer, results[peer.name], task)
        for peer in peers:
            _log(f"storm of {callers}: {peer.name}")
            gateway.reset()
            out = await spawn(peer, gateway.base_url("storm"), {"tag": "cold", "storm": callers})
            results[peer.name].storm_calls = gateway.total_calls
            results[peer.name].storm_wall_s = out["wall_s"]
    return results


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- report


_BASELINE_NAMES = {
    "bare aiohttp": "bare aiohttp session",
    TASK_FLOOR: "bare aiohttp session, each call in a task of its own",
}


def figures(results: Mapping[str, PeerResult], callers: int) -> list[Figure]:
    """limpet beside the floor (with the target) and beside each peer that was measured."""
    limpet = results["limpet"]
    rows = []
    for concurrency, samples in limpet.miss.items():
        us = median_cpu_us(samples)
        for name in ("bare aiohttp", TASK_FLOOR, "AsyncOpenAI", "LiteLLM"):
            if name not in results:
                continue
            floor = name == "bare aiohttp"
            base = median_cpu_us(results[name].miss[concurrency])
            rows.append(
                Figure(
                    figure=f"miss path, client CPU per request, concurrency {concurrency}",
                    unit="us",
                    limpet=us,
                    baseline=base,
                    baseline_name=_BASELINE_NAMES.get(name, name),
                    target="<= 1.3x" if floor else "",
                    met=us <= 1.3 * base if floor else None,
                )
            )
            if floor:
                # Round by round: a ratio's two sides are seconds apart, not a whole run.
                rows.append(
                    Figure(
                        figure=(
                            "miss path, limpet over the bare session in the same round "
                            f"(median of the rounds' ratios), concurrency {concurrency}"
                        ),
                        unit="x",
                        limpet=median_round_ratio(samples, results[name].miss[concurrency]),
                    )
                )
                # How much of the difference is the garbage collector's.
                rows.append(
                    Figure(
                        figure=(
                            "miss path without the garbage collector's passes, "
                            f"concurrency {concurrency}"
                        ),
                        unit="us",
                        limpet=median_own_cpu_us(samples),
                        baseline=median_own_cpu_us(results[name].miss[concurrency]),
                        baseline_name="bare aiohttp session, without them too",
                    )
                )
    peer = results.get("LiteLLM")
    rows.append(
        Figure(
            figure="cache hit, client CPU per call (in memory)",
            unit="us",
            limpet=median_cpu_us(limpet.hit),
            baseline=median_cpu_us(peer.hit) if peer else None,
            baseline_name="LiteLLM in-memory cache" if peer else "",
        )
    )
    storm_peers = [n for n in ("LiteLLM", "AsyncOpenAI") if n in results] or ["bare aiohttp"]
    return rows + [
        Figure(
            figure=f"upstream calls, {callers:,} identical cold requests at once",
            unit="calls",
            limpet=limpet.storm_calls,
            baseline=results[name].storm_calls,
            baseline_name=name,
            target="1",
            met=limpet.storm_calls == 1,
        )
        for name in storm_peers
    ]


def cpu_plot(results: Mapping[str, PeerResult]) -> Plot:
    series = {}
    for name, result in results.items():
        x: list[float | str] = [f"miss, concurrency {c}" for c in result.miss]
        y = [median_cpu_us(samples) for samples in result.miss.values()]
        if result.hit:
            x.append("cache hit")
            y.append(median_cpu_us(result.hit))
        series[name] = Series(x=x, y=y)
    return Plot(
        kind="bar",
        title="Client CPU per request, one local upstream",
        ylabel="us CPU per request (log)",
        yscale="log",
        series=series,
    )


def summary(result: PeerResult) -> dict[str, Any]:
    """The medians and every sample of one contender, for ``details``."""

    def phase(samples: Sequence[Measurement]) -> dict[str, Any]:
        return {
            "cpu_us_per_call": median_cpu_us(samples),
            # Of which the garbage collector's passes (median over rounds).
            "gc_us_per_call": statistics.median(m.gc_us_per_call for m in samples),
            "wall_s": statistics.median(m.wall_s for m in samples),
            "samples": [m.to_json() for m in samples],
        }

    return {
        "miss": {str(c): phase(samples) for c, samples in result.miss.items()},
        "hit": phase(result.hit) if result.hit else None,
        "hit_phase_upstream_calls": result.hit_upstream_calls,
        "storm_upstream_calls": result.storm_calls,
        "storm_wall_s": result.storm_wall_s,
    }


async def main(calls: int, rounds: int, concurrencies: Sequence[int], callers: int) -> None:
    missing = missing_peers(PEERS, lambda module: importlib.util.find_spec(module) is not None)
    if missing:
        _log(skipped_note(missing))
    peers = [p for p in PEERS if p.name not in missing]
    results = await measure(peers, calls, rounds, concurrencies, callers)
    emit(
        "peers",
        figures(results, callers),
        plot=cpu_plot(results),
        skipped=skipped_note(missing),
        contenders={name: summary(result) for name, result in results.items()},
        calls_per_phase=calls,
        rounds=rounds,
        storm_callers=callers,
        storm_upstream_latency_s=STORM_LATENCY,
        hit_set=HIT_SET,
        method=(
            "each contender in its own process against one FakeGateway in the parent; "
            "client CPU = the child's process_time per call, median over rounds; "
            "LiteLLM runs with its in-memory cache on in every phase, as limpet does"
        ),
    )


def run_child(task: Mapping[str, Any]) -> None:
    """The child side of :func:`spawn`: run one task, print its JSON on stdout."""
    peer = next(p for p in PEERS if p.name == task["peer"])
    if "storm" in task:
        job = child_storm(peer, task["base_url"], task["tag"], task["storm"])
    else:
        job = child_round(peer, task["base_url"], task["tag"], task["calls"], task["concurrencies"])
    sys.stdout.write(orjson.dumps(asyncio.run(job)).decode() + "\n")


if __name__ == "__main__":
    parser = command_line(__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2_000, help="per phase and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--callers", type=int, default=1_000, help="in the storm")
    parser.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(orjson.loads(args.child))
    else:
        if args.quick:
            args.calls, args.rounds, args.callers = 200, 1, 200
        asyncio.run(main(args.calls, args.rounds, (50, 500), args.callers))
