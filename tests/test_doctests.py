"""The docstring examples pytest runs: pyproject.toml lists the pure modules beside
``tests`` in ``testpaths`` (with ``--doctest-modules``), and pytest silently drops a path
that matches nothing, so a moved or renamed module would stop running its examples."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pytest_settings() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        settings: dict[str, object] = tomllib.load(file)["tool"]["pytest"]["ini_options"]
    return settings


def doctest_paths() -> list[str]:
    paths = pytest_settings()["testpaths"]
    assert isinstance(paths, list)
    return [str(path) for path in paths if str(path).startswith("src/")]


def test_the_docstring_examples_run_with_the_tests() -> None:
    addopts = pytest_settings()["addopts"]
    assert isinstance(addopts, list)
    assert "--doctest-modules" in addopts
    assert doctest_paths(), "no module's examples are run"


def test_every_doctest_path_is_a_module_with_examples() -> None:
    for path in doctest_paths():
        target = ROOT / path
        assert target.exists(), f"{path} is in testpaths but does not exist"
        modules = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        examples = [m for m in modules if ">>> " in m.read_text(encoding="utf-8")]
        assert examples, f"{path} has no example to run"
