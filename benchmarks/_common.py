"""What every benchmark shares: the JSON it prints and timing helpers."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Figure:
    """One row of the results table: limpet beside its baseline, measured in one run."""

    figure: str
    unit: str
    limpet: float
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        assert self.baseline is not None
        return self.limpet / self.baseline


def emit(benchmark: str, figures: list[Figure], **details: Any) -> None:
    """Print the benchmark's result as one JSON object on stdout."""
    rows = [{**asdict(f), "ratio": f.ratio} for f in figures]
    out = {"benchmark": benchmark, "figures": rows, "details": details}
    sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")


async def per_call_us(call: Callable[[], Awaitable[object]], n: int, rounds: int) -> float:
    """Median over ``rounds`` of the mean microseconds per call of ``n`` sequential calls."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            await call()
        samples.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(samples)
