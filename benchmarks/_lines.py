"""Python lines executed per call, by function: a path's cost counted rather than timed.

On a noisy machine two timings of one change can differ by more than the change; the
lines a call executes do not (the same inputs take the same path). ``LineCount`` counts
them with ``sys.settrace`` in this thread only, so a FakeGateway serving from another
thread is not counted. Lines are not all equal (one may call orjson on a megabyte), so
the count says where Python work is and how much a change removed, not what it costs.
"""

from __future__ import annotations

import sys
from collections import Counter
from types import FrameType
from typing import Any

__all__ = ["LineCount"]

Where = tuple[str, str]  # (file, function)


def _where(frame: FrameType) -> Where:
    path = frame.f_code.co_filename
    for marker in ("site-packages/", "/src/", "python3.11/"):
        path = path.rsplit(marker, 1)[-1]
    return path, frame.f_code.co_name


class LineCount:
    """``with LineCount() as count: ...``: ``count.lines`` maps (file, function) to the
    lines executed there meanwhile; ``count.per_call(n)`` is their total over ``n``."""

    def __init__(self) -> None:
        self.lines: Counter[Where] = Counter()

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        return self._local

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.lines[_where(frame)] += 1
        return self._local

    def __enter__(self) -> LineCount:
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.settrace(None)

    def per_call(self, calls: int) -> float:
        return sum(self.lines.values()) / calls

    def table(self, calls: int, title: str, top: int) -> str:
        """The ``top`` functions by lines per call, under ``title``."""
        rows = [f"## {title}: {self.per_call(calls):,.0f} Python lines per call", ""]
        rows += ["| lines/call | function |", "|--:|---|"]
        for (path, name), lines in self.lines.most_common(top):
            rows.append(f"| {lines / calls:.1f} | `{name}` ({path}) |")
        return "\n".join(rows) + "\n"
