"""The installed distribution's version, read from its metadata."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("limpet")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
