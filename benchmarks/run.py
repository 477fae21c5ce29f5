"""Run the benchmarks one after another and write what they measured.

    python -m benchmarks.run [NAME ...] [--quick] [--update-readme] [--timeout SECONDS]

Every ``benchmarks/NAME.py`` that is not private (``_*.py``) is run as
``python -m benchmarks.NAME`` in its own process, one at a time so that none perturbs
another's timings, with ``--quick`` passed through when given. The runner writes

* ``benchmarks/results/results.json``: every script's raw output, or why it failed, and
  the machine it ran on;
* ``benchmarks/results/RESULTS.md``: the table of figures, with the plots embedded;
* ``benchmarks/results/NAME.png`` for each benchmark that emitted a plot;
* and, with ``--update-readme``, the same table between the ``results`` markers in
  ``README.md``.

A script that exits non-zero, times out or prints something other than one JSON object
is a row marked failed (the tail of its stderr goes to this runner's stderr and to
``results.json``); the others still run. The exit status is 1 if any script failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from benchmarks._common import NOT_APPLICABLE, Figure, Plot, format_value

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_DIR = ROOT / "benchmarks"
RESULTS_DIR = BENCHMARKS_DIR / "results"
README = ROOT / "README.md"

START_MARKER = "<!-- results:start -->"
END_MARKER = "<!-- results:end -->"
DEFAULT_TIMEOUT = 600.0
STDERR_TAIL_LINES = 20


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


# ---------------------------------------------------------------- discovery and runs


def discover(directory: Path = BENCHMARKS_DIR) -> list[str]:
    """The benchmark names in ``directory``: public ``*.py`` modules other than the runner."""
    return sorted(
        path.stem
        for path in directory.glob("*.py")
        if not path.name.startswith("_") and path.name != "run.py"
    )


def select(available: Sequence[str], requested: Sequence[str]) -> list[str]:
    """``requested`` in the order given, or every available benchmark if none was named.

    Raises:
        ValueError: a requested name is not an available benchmark.
    """
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise ValueError(
            f"no such benchmark: {', '.join(unknown)} (have: {', '.join(available) or 'none'})"
        )
    return list(dict.fromkeys(requested)) if requested else list(available)


def parse_output(name: str, returncode: int, stdout: str, stderr: str, seconds: float) -> Outcome:
    """Turn one finished script's exit status and output into an :class:`Outcome`."""
    tail = stderr_tail(stderr)
    if returncode != 0:
        return Outcome(name, seconds, error=f"exit status {returncode}", stderr_tail=tail)
    try:
        output = orjson.loads(stdout)
        if not isinstance(output, dict):
            raise ValueError(f"expected one JSON object, got {type(output).__name__}")
        figures = output.get("figures")
        if not isinstance(figures, list):
            raise ValueError("no 'figures' list")
        details = output.get("details")
        plot_json = details.get("plot") if isinstance(details, dict) else None
        return Outcome(
            name,
            seconds,
            figures=tuple(Figure.from_json(row) for row in figures),
            plot=None if plot_json is None else Plot.from_json(plot_json),
            output=output,
        )
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError too
        return Outcome(name, seconds, error=f"bad output: {exc}", stderr_tail=tail)


def stderr_tail(stderr: str | bytes | None) -> str:
    """The last :data:`STDERR_TAIL_LINES` lines, where a traceback's cause is."""
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    return "\n".join((stderr or "").rstrip().splitlines()[-STDERR_TAIL_LINES:])


def run_one(name: str, *, quick: bool, timeout: float) -> Outcome:
    """Run ``python -m benchmarks.NAME`` from the repository root and read its output."""
    command = [sys.executable, "-m", f"benchmarks.{name}", *(["--quick"] if quick else [])]
    started = time.perf_counter()
    # A process group of its own, so a timeout also stops whatever the script started.
    with subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            _, stderr = proc.communicate()
            return Outcome(
                name,
                time.perf_counter() - started,
                error=f"timed out after {timeout:g} s",
                stderr_tail=stderr_tail(stderr),
            )
        except BaseException:  # Ctrl-C: the child is in another group and did not get it
            _kill_group(proc)
            raise
    return parse_output(name, proc.returncode, stdout, stderr, time.perf_counter() - started)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


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


# ---------------------------------------------------------------- machine and files


def machine_info(*, quick: bool) -> Machine:
    """This machine, this interpreter and this checkout."""
    return Machine(
        date=dt.datetime.now(dt.UTC),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        platform=f"{platform.system()} {platform.release()} {platform.machine()}",
        cpu=_cpu_model(),
        cpu_count=os.cpu_count(),
        commit=_git_commit(),
        quick=quick,
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


def _git_commit() -> str:
    """The short commit, with ``-dirty`` when the tree has changes; ``""`` without git."""
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return commit.stdout.strip()


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


def write_results(outcomes: Sequence[Outcome], machine: Machine, directory: Path) -> list[Outcome]:
    """results.json, RESULTS.md and one PNG per plot, all in ``directory``.

    Returns:
        ``outcomes`` less the plots that could not be drawn (those are logged); the
        numbers are written regardless.
    """
    directory.mkdir(parents=True, exist_ok=True)
    drawn: list[Outcome] = []
    for outcome in outcomes:
        image = directory / f"{outcome.name}.png"
        image.unlink(missing_ok=True)  # a stale chart must never sit beside new numbers
        if outcome.ok and outcome.plot is not None:
            try:
                draw_plot(outcome.plot, image)
            except Exception as exc:  # matplotlib missing, or a chart it cannot draw
                _log(f"{outcome.name}: plot not drawn: {type(exc).__name__}: {exc}")
                outcome = replace(outcome, plot=None)
        drawn.append(outcome)
    (directory / "results.json").write_bytes(results_json(outcomes, machine))
    (directory / "RESULTS.md").write_text(render_results_md(drawn, machine), encoding="utf-8")
    return drawn


def update_readme(outcomes: Sequence[Outcome], machine: Machine, readme: Path = README) -> None:
    """Replace the results section of ``readme``; image links are relative to the root."""
    results = RESULTS_DIR.relative_to(ROOT).as_posix()
    section = render_section(outcomes, machine, image_dir=f"{results}/", embed=False)
    text = readme.read_text(encoding="utf-8")
    readme.write_text(splice_readme(text, section), encoding="utf-8")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- command line


def command_line() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (all)")
    parser.add_argument("--quick", action="store_true", help="pass --quick: small, fast runs")
    parser.add_argument(
        "--update-readme",
        action="store_true",
        help="also replace the results table in README.md (off by default)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"per script (default {DEFAULT_TIMEOUT:g})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    command = command_line()
    args = command.parse_args(argv)
    try:
        names = select(discover(), args.names)
    except ValueError as exc:
        command.error(str(exc))

    machine = machine_info(quick=args.quick)
    outcomes: list[Outcome] = []
    for i, name in enumerate(names, 1):
        _log(f"[{i}/{len(names)}] {name} ...")
        outcome = run_one(name, quick=args.quick, timeout=args.timeout)
        if outcome.ok:
            _log(f"[{i}/{len(names)}] {name}: ok in {outcome.seconds:.1f} s")
        else:
            _log(f"[{i}/{len(names)}] {name}: FAILED ({outcome.error}) in {outcome.seconds:.1f} s")
            _log(textwrap.indent(outcome.stderr_tail or "(no stderr)", "    "))
        outcomes.append(outcome)

    drawn = write_results(outcomes, machine, RESULTS_DIR)
    _log(f"wrote {(RESULTS_DIR / 'RESULTS.md').relative_to(ROOT)}")
    if args.update_readme:
        update_readme(drawn, machine)
        _log(f"updated {README.relative_to(ROOT)}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
