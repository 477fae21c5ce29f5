"""What the runner writes from the benchmarks' outputs: the results table (Markdown),
the provenance line under it, the README section between its markers, ``results.json``
and the plots. Pure but for :func:`draw_plot`, which writes a PNG."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from benchmarks._common import NOT_APPLICABLE, Figure, Plot, format_value

START_MARKER = "<!-- results:start -->"
END_MARKER = "<!-- results:end -->"


class ReadmeMarkersError(ValueError):
    """README.md lacks the pair of markers the results table goes between."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one script produced: its figures and plot, or why it has none."""

    name: str
    seconds: float
    figures: tuple[Figure, ...] = ()
    plot: Plot | None = None
    output: dict[str, Any] | None = None
    error: str = ""
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True, slots=True)
class Machine:
    """Where and when a run happened, for the line under the table."""

    date: dt.datetime
    python: str
    platform: str
    cpu: str
    cpu_count: int | None
    commit: str = ""
    quick: bool = False

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "date": self.date.isoformat(timespec="seconds")}


# ---------------------------------------------------------------- formatting


def format_met(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: NOT_APPLICABLE}[met]


def cell(text: str) -> str:
    """``text`` made safe for one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


# ---------------------------------------------------------------- rendering

TABLE_HEADER = "| figure | limpet | baseline | ratio | target | met |\n|---|--:|---|--:|---|:-:|"


def figure_row(figure: Figure) -> str:
    baseline = format_value(figure.baseline, figure.unit)
    if figure.baseline_name:
        baseline = f"{baseline} ({figure.baseline_name})"
    cells = [
        figure.figure,
        format_value(figure.limpet, figure.unit),
        baseline,
        format_value(figure.ratio, "x"),
        figure.target or NOT_APPLICABLE,
        format_met(figure.met),
    ]
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def failed_row(outcome: Outcome) -> str:
    cells = [f"`{outcome.name}` failed: {outcome.error}", *[NOT_APPLICABLE] * 4, "**failed**"]
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def render_table(outcomes: Sequence[Outcome]) -> str:
    """The results table: every figure of every benchmark, or one row for a failed one."""
    rows = [TABLE_HEADER]
    for outcome in outcomes:
        if outcome.ok:
            rows.extend(figure_row(f) for f in outcome.figures)
        else:
            rows.append(failed_row(outcome))
    return "\n".join(rows) + "\n"


def render_provenance(machine: Machine) -> str:
    """When and where the figures were measured, and what their ratios mean."""
    commit = f" at `{machine.commit}`" if machine.commit else ""
    cpus = f"{machine.cpu_count} CPUs" if machine.cpu_count else "unknown CPU count"
    cpu = f"{machine.cpu}, " if machine.cpu else ""
    text = (
        f"Measured {machine.date:%Y-%m-%d %H:%M} UTC{commit} on {machine.platform} "
        f"({cpu}{cpus}), {machine.python}. Each ratio is limpet / baseline, "
        "the two measured side by side in the same run."
    )
    if machine.quick:
        text += " **Quick run** (`--quick`): small sizes, indicative only."
    return text + "\n"


def render_section(
    outcomes: Sequence[Outcome], machine: Machine, *, image_dir: str, embed: bool
) -> str:
    """Provenance, table and plots; images are ``{image_dir}NAME.png``, embedded or linked."""
    parts = [render_provenance(machine), render_table(outcomes)]
    plotted = [(o.name, o.plot) for o in outcomes if o.ok and o.plot is not None]
    if embed:
        parts.extend(f"![{cell(p.title)}]({image_dir}{name}.png)\n" for name, p in plotted)
    elif plotted:
        links = " · ".join(f"[{name}]({image_dir}{name}.png)" for name, _ in plotted)
        parts.append(f"Plots: {links}. Raw output: [`results.json`]({image_dir}results.json).\n")
    return "\n".join(parts)


def render_results_md(outcomes: Sequence[Outcome], machine: Machine) -> str:
    """``benchmarks/results/RESULTS.md``, which sits beside the images it embeds."""
    section = render_section(outcomes, machine, image_dir="", embed=True)
    return f"# Benchmark results\n\n{section}"


def splice_readme(readme: str, section: str) -> str:
    """``readme`` with the text between the results markers replaced by ``section``.

    Everything up to and including the start marker, and from the end marker on, is
    kept byte for byte.

    Raises:
        ReadmeMarkersError: the markers are missing, repeated or out of order.
    """
    starts, ends = readme.count(START_MARKER), readme.count(END_MARKER)
    start = readme.find(START_MARKER)
    end = readme.find(END_MARKER)
    if starts != 1 or ends != 1 or end < start:
        raise ReadmeMarkersError(
            f"README must contain {START_MARKER!r} and then {END_MARKER!r}, once each "
            f"(found the start marker {starts}x, the end marker {ends}x"
            + (", end before start)" if starts == ends == 1 else ")")
        )
    head = readme[: start + len(START_MARKER)]
    return f"{head}\n\n{section.strip(chr(10))}\n\n{readme[end:]}"


def results_json(outcomes: Sequence[Outcome], machine: Machine) -> bytes:
    """``results.json``: the machine and, per script, its raw output or why it failed."""
    benchmarks = [
        {
            "name": o.name,
            "ok": o.ok,
            "seconds": round(o.seconds, 3),
            "error": o.error,
            "stderr_tail": o.stderr_tail,
            "output": o.output,
        }
        for o in outcomes
    ]
    document = {"machine": machine.to_json(), "benchmarks": benchmarks}
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def draw_plot(plot: Plot, path: Path) -> None:
    """Draw ``plot`` to a PNG at ``path`` (Agg, no display, no pyplot global state)."""
    from matplotlib.figure import Figure as Canvas  # imported late: only the runner needs it

    canvas = Canvas(figsize=(7.5, 4.2), layout="constrained")
    ax = canvas.add_subplot()
    # Scales first: setting one afterwards would reset the bar chart's category ticks.
    ax.set(title=plot.title, xlabel=plot.xlabel, ylabel=plot.ylabel, yscale=plot.yscale)
    if plot.kind == "line":
        ax.set_xscale(plot.xscale)
        for label, series in plot.series.items():
            ax.plot(list(series.x), list(series.y), marker="o", label=label)
        ax.grid(visible=True, alpha=0.3)
    else:
        categories = list(dict.fromkeys(str(x) for s in plot.series.values() for x in s.x))
        width = 0.8 / len(plot.series)
        for i, (label, series) in enumerate(plot.series.items()):
            offset = (i - (len(plot.series) - 1) / 2) * width
            positions = [categories.index(str(x)) + offset for x in series.x]
            ax.bar(positions, list(series.y), width=width, label=label)
        crowded = sum(map(len, categories)) > 60
        ax.set_xticks(range(len(categories)), categories, rotation=20 if crowded else 0)
        ax.grid(visible=True, axis="y", alpha=0.3)
    ax.legend()
    canvas.savefig(path, dpi=120)
