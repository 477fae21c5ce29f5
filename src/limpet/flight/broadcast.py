"""One producer's items, read by any number of consumers, each from the first item."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Broadcast(Generic[T, R]):
    """Items pushed by one producer, replayed to every consumer from the start, then live.

    A consumer that joins late gets everything so far and then the tail as it arrives;
    consumers read at their own pace and never block the producer or each other. The
    producer ends with ``finish(result)`` or ``fail(error)``; every consumer then sees
    the end or the error.

    With ``replay=False`` there is one consumer, and an item is dropped once it has read
    it: the broadcast then holds only what is not read yet, however long the stream.

    Example:
        >>> b: Broadcast[str, int] = Broadcast()
        >>> b.push("a"); b.finish(1)
        >>> [item async for item in b.items()], b.result
        (['a'], 1)
    """

    __slots__ = ("_changed", "_replay", "error", "finished", "items_so_far", "result")

    def __init__(self, *, replay: bool = True) -> None:
        self._replay = replay
        self.items_so_far: list[T] = []
        self.finished = False
        self.result: R | None = None
        self.error: BaseException | None = None
        self._changed: asyncio.Future[None] | None = None

    def push(self, item: T) -> None:
        self.items_so_far.append(item)
        self._wake()

    def finish(self, result: R) -> None:
        self.result = result
        self.finished = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.finished = True
        self._wake()

    async def items(self) -> AsyncIterator[T]:
        """Every item, from the first; raises the producer's error after the last one."""
        index = 0
        while True:
            if index < len(self.items_so_far):
                item = self.items_so_far[index]
                if self._replay:
                    index += 1
                else:  # the only consumer has it now; a slow one holds few, popped in order
                    del self.items_so_far[0]
                yield item
                continue
            if self.finished:
                if self.error is not None:
                    raise self.error
                return
            if self._changed is None:
                self._changed = asyncio.get_running_loop().create_future()
            # Shielded: a consumer that is cancelled must not cancel the shared future.
            await asyncio.shield(self._changed)

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)
