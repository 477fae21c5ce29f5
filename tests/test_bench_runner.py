"""The benchmark runner's pure parts: reading outputs, formatting, the table, the README.

No benchmark is run here; outputs are written by hand or by ``emit`` itself.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, replace
from pathlib import Path

import orjson
import pytest
from benchmarks._common import Figure, Plot, Series, emit, format_number, format_value
from benchmarks._report import (
    END_MARKER,
    START_MARKER,
    Machine,
    Outcome,
    ReadmeMarkersError,
    render_results_md,
    render_section,
    render_table,
    results_json,
    splice_readme,
)
from benchmarks.run import command_line, discover, parse_output, select

MACHINE = Machine(
    date=dt.datetime(2025, 11, 22, 3, 40, tzinfo=dt.UTC),
    python="CPython 3.11.2",
    platform="Linux 6.1.0 x86_64",
    cpu="Example CPU @ 2.00GHz",
    cpu_count=2,
    commit="5e09f8a",
)

HIT = Figure(
    figure="in-memory hit, us per call (~2 KB request)",
    unit="us",
    limpet=14.237,
    baseline=5.1,
    baseline_name="floor: canonical JSON + hash + dict lookup",
    target="<= 25 us and <= 3x floor",
    met=True,
)
SAVED = Figure(figure="saved per 1k calls", unit="$", limpet=0.0123, target="> $0", met=None)
STORM_PLOT = Plot(
    kind="line",
    title="Upstream calls in a storm",
    xlabel="callers",
    ylabel="calls",
    series={
        "limpet": Series(x=[1, 10, 100], y=[1, 1, 1]),
        "no coalescing": Series(x=[1, 10, 100], y=[1, 10, 100]),
    },
)


def outcome_of(name: str, figures: list[Figure], plot: Plot | None = None) -> Outcome:
    details = {} if plot is None else {"plot": plot.to_json()}
    out = {
        "benchmark": name,
        "figures": [{**asdict(f), "ratio": f.ratio} for f in figures],
        "details": details,
    }
    return parse_output(name, 0, orjson.dumps(out).decode(), "", 1.0)


# ---------------------------------------------------------------- number formatting


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [
        (14.237, "us", "14.2 us"),
        (5.1, "us", "5.10 us"),
        (0.5, "ms", "0.500 ms"),
        (1234.5, "ms", "1,234 ms"),
        (0.0, "s", "0 s"),
        (1.0, "calls", "1 call"),
        (100.0, "calls", "100 calls"),
        (12345.0, "calls", "12,345 calls"),
        (2.5, "calls", "2.50 calls"),
        (0.0123, "$", "$0.0123"),
        (0.000456, "$", "$0.000456"),
        (1234.5, "$", "$1,234.50"),
        (-0.5, "$", "-$0.500"),
        (95.04, "%", "95.0%"),
        (100.0, "%", "100%"),
        (0.05, "%", "0.0500%"),
        (2.7834, "x", "2.78x"),
        (12.0, "x", "12.0x"),
        (3.0, "tokens", "3.00 tokens"),
        (3.0, "", "3.00"),
        (None, "us", "—"),
    ],
)
def test_format_value_by_unit(value: float | None, unit: str, shown: str) -> None:
    assert format_value(value, unit) == shown


def test_format_value_takes_an_int_too() -> None:
    assert format_value(3, "calls") == "3 calls"


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.001234, "0.00123"), (-0.001234, "-0.00123"), (9.994, "9.99"), (-250.4, "-250")],
)
def test_format_number_keeps_three_significant_figures(value: float, shown: str) -> None:
    assert format_number(value) == shown


# ---------------------------------------------------------------- the table

HEADER = "| figure | limpet | baseline | ratio | target | met |\n|---|--:|---|--:|---|:-:|\n"


def test_table_has_a_row_per_figure_a_failed_row_and_dashes_for_no_baseline() -> None:
    failed = parse_output("storm", 1, "", "Traceback ...\nRuntimeError: boom\n", 2.0)
    table = render_table([outcome_of("hit_path", [HIT, SAVED]), failed])
    assert table == HEADER + (
        "| in-memory hit, us per call (~2 KB request) | 14.2 us "
        "| 5.10 us (floor: canonical JSON + hash + dict lookup) | 2.79x "
        "| <= 25 us and <= 3x floor | yes |\n"
        "| saved per 1k calls | $0.0123 | — | — | > $0 | — |\n"
        "| `storm` failed: exit status 1 | — | — | — | — | **failed** |\n"
    )


def test_an_unmet_target_is_bold_and_pipes_are_escaped() -> None:
    figure = Figure(figure="a | b", unit="ms", limpet=2.0, baseline=1.0, target="<= 1", met=False)
    assert render_table([outcome_of("x", [figure])]).splitlines()[2] == (
        "| a \\| b | 2.00 ms | 1.00 ms | 2.00x | <= 1 | **no** |"
    )


def test_results_md_says_when_and_where_and_embeds_plots() -> None:
    md = render_results_md([outcome_of("storm", [SAVED], STORM_PLOT)], MACHINE)
    assert md.startswith("# Benchmark results\n\nMeasured 2025-11-22 03:40 UTC at `5e09f8a` on ")
    assert "Linux 6.1.0 x86_64 (Example CPU @ 2.00GHz, 2 CPUs), CPython 3.11.2." in md
    assert "side by side in the same run" in md
    assert "![Upstream calls in a storm](storm.png)" in md
    assert "Quick run" not in md


def test_readme_section_links_plots_from_the_repo_root_and_flags_quick_runs() -> None:
    quick = replace(MACHINE, quick=True)
    section = render_section(
        [outcome_of("storm", [SAVED], STORM_PLOT), outcome_of("hit_path", [HIT])],
        quick,
        image_dir="benchmarks/results/",
        embed=False,
    )
    assert "Plots: [storm](benchmarks/results/storm.png)." in section
    assert "hit_path.png" not in section
    assert "**Quick run** (`--quick`)" in section


# ---------------------------------------------------------------- README splicing

README = (
    "# limpet\n\nIntro.\n\n## Benchmarks\n\n"
    f"{START_MARKER}\nold table\n{END_MARKER}\n\n## Layout\n\nText after.\n"
)


def test_splice_replaces_only_between_the_markers() -> None:
    spliced = splice_readme(README, "| new | table |\n")
    head, tail = README.split(START_MARKER)[0], README.split(END_MARKER)[1]
    assert spliced.startswith(head + START_MARKER)
    assert spliced.endswith(END_MARKER + tail)
    assert "old table" not in spliced
    assert f"{START_MARKER}\n\n| new | table |\n\n{END_MARKER}" in spliced


def test_splice_is_idempotent_and_reversible_outside_the_markers() -> None:
    once = splice_readme(README, "first")
    assert splice_readme(once, "first") == once
    assert splice_readme(splice_readme(once, "second"), "first") == once


@pytest.mark.parametrize(
    ("readme", "found"),
    [
        ("no markers at all\n", "start marker 0x, the end marker 0x"),
        (f"{START_MARKER}\n", "start marker 1x, the end marker 0x"),
        (f"{END_MARKER}\n{START_MARKER}\n", "end before start"),
        (f"{START_MARKER}\n{START_MARKER}\n{END_MARKER}\n", "start marker 2x"),
    ],
)
def test_splice_fails_clearly_without_one_pair_of_markers(readme: str, found: str) -> None:
    with pytest.raises(ReadmeMarkersError, match=found) as caught:
        splice_readme(readme, "table")
    assert START_MARKER in str(caught.value)


def test_the_real_readme_has_the_markers() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    splice_readme(readme, "table")


# ---------------------------------------------------------------- reading script output


def test_parse_output_reads_what_emit_writes(capsys: pytest.CaptureFixture[str]) -> None:
    emit("storm", [HIT, SAVED], plot=STORM_PLOT, callers=100)
    out = capsys.readouterr().out
    outcome = parse_output("storm", 0, out, "", 3.5)
    assert outcome.ok
    assert outcome.figures == (HIT, SAVED)
    assert outcome.plot == Plot.from_json(STORM_PLOT.to_json())
    assert outcome.output is not None
    assert outcome.output["details"]["callers"] == 100


def test_emit_without_a_plot_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    emit("hit_path", [HIT], rounds=7)
    out = orjson.loads(capsys.readouterr().out)
    assert out["details"] == {"rounds": 7}
    assert out["figures"][0]["ratio"] == pytest.approx(14.237 / 5.1)
    assert parse_output("hit_path", 0, orjson.dumps(out).decode(), "", 1.0).plot is None


@pytest.mark.parametrize(
    ("stdout", "error"),
    [
        ("starting...\n{}", "bad output: unexpected character"),
        ("[1, 2]", "bad output: expected one JSON object, got list"),
        ('{"benchmark": "x"}', "bad output: no 'figures' list"),
        ('{"figures": [{"figure": "f", "unit": "us"}]}', "limpet: expected a number"),
        ('{"figures": [{"figure": "f", "unit": "us", "limpet": true}]}', "expected a number"),
        ('{"figures": [], "details": {"plot": {"kind": "pie", "series": {}}}}', "kind must be"),
    ],
)
def test_bad_output_is_a_failure_not_a_crash(stdout: str, error: str) -> None:
    outcome = parse_output("x", 0, stdout, "warning: slow\n", 1.0)
    assert not outcome.ok
    assert error.lower() in outcome.error.lower()
    assert outcome.stderr_tail == "warning: slow"


def test_a_failed_script_keeps_only_the_tail_of_its_stderr() -> None:
    stderr = "".join(f"line {i}\n" for i in range(100))
    outcome = parse_output("x", 2, "", stderr, 1.0)
    assert outcome.error == "exit status 2"
    assert outcome.stderr_tail.splitlines() == [f"line {i}" for i in range(80, 100)]


def test_results_json_keeps_raw_outputs_failures_and_the_machine() -> None:
    failed = parse_output("storm", 1, "", "boom\n", 2.0)
    document = orjson.loads(results_json([outcome_of("hit_path", [HIT]), failed], MACHINE))
    assert document["machine"]["cpu_count"] == 2
    assert document["machine"]["date"] == "2025-11-22T03:40:00+00:00"
    ok, bad = document["benchmarks"]
    assert ok["ok"] and ok["output"]["benchmark"] == "hit_path"
    assert not bad["ok"] and bad["output"] is None and bad["stderr_tail"] == "boom"


@pytest.mark.parametrize(
    "plot",
    [
        {"kind": "line", "title": "t", "series": {"a": {"x": [1, 2], "y": [1]}}},
        {"kind": "bar", "title": "t", "series": {}},
        {"kind": "bar", "title": "t", "yscale": "cubic", "series": {"a": {"x": [], "y": []}}},
        {"kind": "bar", "title": "t", "series": {"a": {"x": [1], "y": ["1"]}}},
    ],
)
def test_plot_from_json_rejects_malformed_plots(plot: object) -> None:
    with pytest.raises(ValueError, match=r"^plot"):
        Plot.from_json(plot)


# ---------------------------------------------------------------- discovery


def test_discover_lists_public_scripts_but_not_the_runner(tmp_path: Path) -> None:
    for name in ("hit_path.py", "storm.py", "_common.py", "__init__.py", "run.py", "notes.md"):
        (tmp_path / name).write_text("")
    assert discover(tmp_path) == ["hit_path", "storm"]


def test_select_keeps_the_order_asked_for_and_rejects_unknown_names() -> None:
    assert select(["a", "b", "c"], []) == ["a", "b", "c"]
    assert select(["a", "b", "c"], ["c", "a", "c"]) == ["c", "a"]
    with pytest.raises(ValueError, match="no such benchmark: nope"):
        select(["a"], ["nope"])


# ---------------------------------------------------------------- drawing


@pytest.mark.parametrize("kind", ["bar", "line"])
def test_draw_plot_writes_a_png(tmp_path: Path, kind: str) -> None:
    pytest.importorskip("matplotlib")
    from benchmarks._report import draw_plot

    plot = Plot.from_json({**STORM_PLOT.to_json(), "kind": kind, "yscale": "log"})
    draw_plot(plot, tmp_path / "storm.png")
    assert (tmp_path / "storm.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_readme_is_rewritten_only_when_asked() -> None:
    assert command_line().parse_args([]).update_readme is False
    assert command_line().parse_args(["--update-readme"]).update_readme is True
