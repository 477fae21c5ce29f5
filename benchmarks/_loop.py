"""How long the event loop is blocked while something runs: a monitor task that keeps
yielding and records every gap between its turns.

Gaps are measured in this thread's CPU time (``time.thread_time``), not wall time: on a
busy machine the process is also descheduled now and then, and that is not the loop
being blocked by the code under test."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

#: A gap shorter than this is the loop's normal turn-around, not a block.
BLOCK_FLOOR_S = 0.001


class LoopMonitor:
    """``async with LoopMonitor() as m: ...``; then ``m.longest_ms`` (the longest single
    block) and ``m.blocked_ms`` (every gap over ``BLOCK_FLOOR_S``, added up)."""

    def __init__(self) -> None:
        self.longest_ms = 0.0
        self.blocked_ms = 0.0
        self._running = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopMonitor:
        self._running = True
        self._task = asyncio.create_task(self._watch())
        await asyncio.sleep(0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._running = False
        if self._task is not None:
            await self._task

    async def _watch(self) -> None:
        last = time.thread_time()
        while self._running:
            await asyncio.sleep(0)
            now = time.thread_time()
            gap = now - last
            last = now
            self.longest_ms = max(self.longest_ms, gap * 1e3)
            if gap > BLOCK_FLOOR_S:
                self.blocked_ms += gap * 1e3
