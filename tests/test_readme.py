"""The README opens with the two commands, and CI runs exactly the README's test command."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from limpet import Client

ROOT = Path(__file__).resolve().parent.parent


def _test_command_in_ci() -> str:
    match = re.search(r'^TEST_COMMAND="(.+)"$', (ROOT / ".ci" / "run").read_text(), re.M)
    assert match, ".ci/run must define TEST_COMMAND"
    return match.group(1)


def _code_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = _code_blocks(readme)
    assert _test_command_in_ci() in blocks[:2]


def test_the_readme_starts_with_the_demo_then_the_tests() -> None:
    blocks = _code_blocks((ROOT / "README.md").read_text())
    assert "limpet demo" in blocks[0]
    assert "pytest" in blocks[1]


def test_the_configuration_table_names_every_client_argument_once() -> None:
    section = (ROOT / "README.md").read_text().split("\n## Configuration\n")[1]
    table = section.split("\n## ")[0]
    rows = re.findall(r"^\| `([^`]+)`(?:, `([^`]+)`)? \|", table, re.M)
    named = [name for row in rows for name in row if name]
    arguments = [name for name in inspect.signature(Client.__init__).parameters if name != "self"]
    assert sorted(named) == sorted(arguments)


def test_the_readme_says_warm_counts_bad_input_rather_than_raising() -> None:
    # Regression: it said ``warm()`` raised InvalidRequestError for bad input before any
    # request; it counts each bad request as failed and sends the rest
    # (``tests/integration/test_bad_input.py``), as its docstring says.
    readme = " ".join((ROOT / "README.md").read_text().split())
    said = readme.split("Bad input of any kind")[1].split("```")[0]
    raises, _, after = said.partition("`warm()`")
    assert "raises `InvalidRequestError` naming the field, before any request" in raises
    assert "counts each bad one as failed" in after
    assert "failures counted, not raised" in " ".join((Client.warm.__doc__ or "").split())
