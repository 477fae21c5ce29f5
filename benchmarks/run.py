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
from dataclasses import replace
from pathlib import Path

import orjson

from benchmarks._common import Figure, Plot
from benchmarks._report import (
    Machine,
    Outcome,
    draw_plot,
    render_results_md,
    render_section,
    results_json,
    splice_readme,
)

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_DIR = ROOT / "benchmarks"
RESULTS_DIR = BENCHMARKS_DIR / "results"
README = ROOT / "README.md"

DEFAULT_TIMEOUT = 600.0
STDERR_TAIL_LINES = 20


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
