"""What every benchmark prints: the JSON of its figures and plot, and how units read.

A benchmark is a script ``benchmarks/NAME.py`` run as ``python -m benchmarks.NAME``. It

* accepts ``--quick`` for a small, fast run (the runner passes it through; a script that
  rejects it is reported as failed), and
* prints exactly one JSON object on stdout through :func:`emit` (anything else goes to
  stderr)::

    {"benchmark": "hit_path",
     "figures": [{"figure", "unit", "limpet", "baseline", "baseline_name",
                  "target", "met", "ratio"}, ...],
     "details": {..., "plot": {"kind", "title", "xlabel", "ylabel", "xscale", "yscale",
                               "series": {label: {"x": [...], "y": [...]}}}}}

``details["plot"]`` is optional; when present, ``python -m benchmarks.run`` draws it to
``benchmarks/results/NAME.png``. Build it with :class:`Plot`, never by hand::

    emit("storm", figures, plot=Plot(
        kind="line", title="Upstream calls in a storm", xlabel="callers", ylabel="calls",
        series={"limpet": Series(x=[1, 10, 100], y=[1, 1, 1]),
                "no coalescing": Series(x=[1, 10, 100], y=[1, 10, 100])}))

How a benchmark runs (command line, endpoint, clocks, timers, scratch keys) is
:mod:`benchmarks._harness`'s.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

import orjson

PlotKind = Literal["bar", "line"]
Scale = Literal["linear", "log"]

NOT_APPLICABLE = "—"  # a number that does not exist, such as the ratio to no baseline


@dataclass(frozen=True, slots=True)
class Figure:
    """One row of the results table: limpet beside its baseline, measured in one run.

    ``unit`` picks how :func:`format_value` writes the numbers: ``"us"``, ``"ms"``, ``"s"``,
    ``"calls"``, ``"$"`` (US dollars), ``"%"`` (percentage points, 0 to 100, not a
    fraction) and ``"x"`` (a multiple) are known; any other unit is printed after the
    number. ``ratio`` is ``limpet / baseline``.
    """

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

    @classmethod
    def from_json(cls, data: object) -> Figure:
        """Read back one row of ``figures`` (its ``ratio`` is recomputed, not trusted).

        Raises:
            ValueError: the row does not have the shape :func:`emit` writes.
        """
        row = _mapping(data, "figure row")
        baseline = row.get("baseline")
        met = row.get("met")
        if met is not None and not isinstance(met, bool):
            raise ValueError(f"figure row: met must be true, false or null, got {met!r}")
        return cls(
            figure=_str(row.get("figure"), "figure"),
            unit=_str(row.get("unit"), "unit"),
            limpet=_number(row.get("limpet"), "limpet"),
            baseline=None if baseline is None else _number(baseline, "baseline"),
            baseline_name=_str(row.get("baseline_name", ""), "baseline_name"),
            target=_str(row.get("target", ""), "target"),
            met=met,
        )


@dataclass(frozen=True, slots=True)
class Series:
    """One labelled series of a :class:`Plot`: ``y[i]`` is drawn at ``x[i]``.

    For a bar plot ``x`` holds the categories (strings or numbers, shown as text).
    """

    x: Sequence[float | str]
    y: Sequence[float]

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"series: {len(self.x)} x values but {len(self.y)} y values")


@dataclass(frozen=True, slots=True, kw_only=True)
class Plot:
    """A chart a benchmark asks the runner to draw; passed as ``emit(..., plot=Plot(...))``.

    ``"line"`` draws each series as a line with markers over numeric ``x``; ``"bar"``
    draws grouped bars, one group per distinct ``x`` (in order of first appearance) and
    one bar per series. ``xscale`` applies to line plots only.
    """

    kind: PlotKind
    title: str
    series: Mapping[str, Series]
    xlabel: str = ""
    ylabel: str = ""
    xscale: Scale = "linear"
    yscale: Scale = "linear"

    def __post_init__(self) -> None:
        if self.kind not in get_args(PlotKind):
            raise ValueError(f"plot: kind must be 'bar' or 'line', got {self.kind!r}")
        for scale in (self.xscale, self.yscale):
            if scale not in get_args(Scale):
                raise ValueError(f"plot: scale must be 'linear' or 'log', got {scale!r}")
        if not self.series:
            raise ValueError("plot: needs at least one series")

    def to_json(self) -> dict[str, Any]:
        """The ``details["plot"]`` object :func:`emit` writes."""
        return {
            "kind": self.kind,
            "title": self.title,
            "xlabel": self.xlabel,
            "ylabel": self.ylabel,
            "xscale": self.xscale,
            "yscale": self.yscale,
            "series": {label: {"x": list(s.x), "y": list(s.y)} for label, s in self.series.items()},
        }

    @classmethod
    def from_json(cls, data: object) -> Plot:
        """Read back a ``details["plot"]`` object.

        Raises:
            ValueError: it does not have the shape :meth:`to_json` writes.
        """
        obj = _mapping(data, "plot")
        series: dict[str, Series] = {}
        for label, raw in _mapping(obj.get("series"), "plot.series").items():
            where = f"plot.series[{label!r}]"
            s = _mapping(raw, where)
            xs = _list(s.get("x"), f"{where}.x")
            ys = _list(s.get("y"), f"{where}.y")
            if len(xs) != len(ys):
                raise ValueError(f"{where}: {len(xs)} x values but {len(ys)} y values")
            series[label] = Series(
                x=[x if isinstance(x, str) else _number(x, f"{where}.x") for x in xs],
                y=[_number(y, f"{where}.y") for y in ys],
            )
        return cls(
            kind=cast(PlotKind, obj.get("kind")),  # checked in __post_init__
            title=_str(obj.get("title", ""), "plot.title"),
            xlabel=_str(obj.get("xlabel", ""), "plot.xlabel"),
            ylabel=_str(obj.get("ylabel", ""), "plot.ylabel"),
            xscale=cast(Scale, obj.get("xscale", "linear")),
            yscale=cast(Scale, obj.get("yscale", "linear")),
            series=series,
        )


def emit(
    benchmark: str, figures: list[Figure], *, plot: Plot | None = None, **details: Any
) -> None:
    """Print the benchmark's result as one JSON object on stdout.

    Args:
        benchmark: the script's name, ``NAME`` in ``benchmarks/NAME.py``.
        figures: the rows it contributes to the results table.
        plot: a chart for ``benchmarks/results/NAME.png``, stored as ``details["plot"]``.
        **details: anything else worth keeping in ``results.json``.
    """
    rows = [{**asdict(f), "ratio": f.ratio} for f in figures]
    if plot is not None:
        details["plot"] = plot.to_json()
    out = {"benchmark": benchmark, "figures": rows, "details": details}
    sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")


def format_number(value: float) -> str:
    """About three significant figures, thousands separated, never an exponent."""
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude == 0:
        return "0"
    return f"{value:.{2 - math.floor(math.log10(magnitude))}f}"


def format_value(value: float | None, unit: str) -> str:
    """``value`` as the results table shows a number in ``unit`` (see ``Figure``)."""
    if value is None:
        return NOT_APPLICABLE
    if unit == "calls":
        if float(value).is_integer():
            return f"{value:,.0f} {'call' if value == 1 else 'calls'}"
        return f"{format_number(value)} calls"
    if unit == "$":
        sign = "-" if value < 0 else ""
        dollars = f"{abs(value):,.2f}" if abs(value) >= 1 else format_number(abs(value))
        return f"{sign}${dollars}"
    if unit in ("%", "x"):
        return f"{format_number(value)}{unit}"
    return f"{format_number(value)} {unit}".rstrip()


def _mapping(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what}: expected an object, got {type(value).__name__}")
    return value


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list):
        raise ValueError(f"{what}: expected a list, got {type(value).__name__}")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected a string, got {type(value).__name__}")
    return value


def _number(value: object, what: str) -> float:
    # bool is an int; a true/false where a number belongs is a bug in the benchmark.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}: expected a number, got {value!r}")
    return float(value)
