"""Optional extras: a missing one is an ``ImportError`` that says what to install."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["import_extra", "require_extra"]


@contextmanager
def require_extra(feature: str, extra: str, *modules: str) -> Iterator[None]:
    """Turn a missing third-party module (one of ``modules``, or a submodule of one) into
    ``ImportError: <feature> needs the <extra> extra: pip install 'limpet[<extra>]'``.

    Any other import failure (a broken install, a missing module of limpet's own) passes
    through unchanged, so this never hides a real bug.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not any(missing == m or missing.startswith(m + ".") for m in modules):
            raise
        raise ImportError(
            f"{feature} needs the {extra} extra: pip install 'limpet[{extra}]'", name=missing
        ) from exc


def import_extra(module: str, attribute: str, *, extra: str, needs: tuple[str, ...]) -> Any:
    """``from <module> import <attribute>``, where ``module`` needs the third-party
    modules ``needs`` of the optional ``extra``."""
    with require_extra(attribute, extra, *needs):
        return getattr(importlib.import_module(module), attribute)
