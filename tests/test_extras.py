"""With only ``pip install limpet``: the core works, and each optional extra's feature
fails at import with an ``ImportError`` that says what to install.

Run in a real virtual environment without the extras, built from this checkout.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import importlib
for module, name in [
    ("limpet", "RedisCache"),
    ("limpet.cache", "RedisCache"),
    ("limpet.metrics", "PrometheusMetrics"),
    ("limpet.tracing", "OpenTelemetrySpans"),
]:
    try:
        getattr(importlib.import_module(module), name)
    except ImportError as exc:
        print(f"{module}.{name}: {type(exc).__name__}: {exc}")
    else:
        print(f"{module}.{name}: imported")
"""


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv holding limpet and its runtime dependencies only."""
    where = tmp_path_factory.mktemp("bare-venv")
    venv.create(where, with_pip=True)
    python = where / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(REPO)],
        check=True,
        capture_output=True,
    )
    return python


def test_each_missing_extra_names_what_to_install(bare_python: Path) -> None:
    out = subprocess.run(
        [bare_python, "-c", PROBE], check=True, capture_output=True, text=True
    ).stdout
    assert out.splitlines() == [
        "limpet.RedisCache: ImportError: "
        "RedisCache needs the redis extra: pip install 'limpet[redis]'",
        "limpet.cache.RedisCache: ImportError: "
        "RedisCache needs the redis extra: pip install 'limpet[redis]'",
        "limpet.metrics.PrometheusMetrics: ImportError: "
        "PrometheusMetrics needs the prometheus extra: pip install 'limpet[prometheus]'",
        "limpet.tracing.OpenTelemetrySpans: ImportError: "
        "OpenTelemetrySpans needs the otel extra: pip install 'limpet[otel]'",
    ]


def test_the_demo_runs_without_any_extra(bare_python: Path) -> None:
    done = subprocess.run(
        [bare_python, "-m", "limpet", "demo", "--requests", "40", "--burst", "8", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert '"with_limpet"' in done.stdout


def test_the_probe_sees_the_extras_here() -> None:
    # The same probe in the dev environment imports everything: the test above is not
    # passing merely because the probe is broken.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], check=True, capture_output=True, text=True
    ).stdout
    assert out.count(": imported") == 4


def test_the_cli_says_which_extra_a_command_needs(bare_python: Path) -> None:
    done = subprocess.run(
        [bare_python, "-m", "limpet", "stats", "--redis", "redis://127.0.0.1:1/0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [
        "limpet stats: RedisCache needs the redis extra: pip install 'limpet[redis]'"
    ]
