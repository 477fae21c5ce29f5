"""A stored or shared answer replayed to one ``stream()`` reader: checked whole before
its first chunk is given (``replayable``), then given chunk by chunk with the reader's
completion (``replayed``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from limpet.cache.tiered import TieredCache
from limpet.errors import CacheCorruptError
from limpet.http.chunk_replay import replay_chunks
from limpet.http.chunks import Finishes, without_usage
from limpet.models import Completion, json_copy

if TYPE_CHECKING:
    from limpet.cache.base import CacheEntry
    from limpet.pipeline.stream import CompletionStream

__all__ = ["closed_whole", "replayable", "replayed"]


async def replayed(
    chunks: list[dict[str, Any]],
    asked: int,
    declined: bool,
    sink: CompletionStream,
    completion: Completion,
    *,
    copied: bool = False,
) -> AsyncGenerator[dict[str, Any], None]:
    """A replay's chunks for one reader (each a copy of its own when ``copied``: the
    entry is every waiter's), without usage when it ``declined`` it; ``completion`` is
    its answer once the replay ends, or once the reader closes it with every choice
    asked for in hand (``closed_whole``)."""
    finishes = Finishes(asked)
    sink.cache = completion.cache  # known before the first chunk
    try:
        for chunk in chunks:
            finishes.see(chunk)
            shown = without_usage(chunk) if declined else chunk
            if shown is not None:
                yield json_copy(shown) if copied else shown
    except GeneratorExit:
        if closed_whole(finishes):
            sink.completion = completion
        raise
    sink.completion = completion


def closed_whole(finishes: Finishes) -> bool:
    """Whether a replay's reader, closing it now, stopped at its end: it had every
    choice asked for, and it closed the stream (its task is not being cancelled: a
    cancelled reader is counted cancelled, as on a live stream)."""
    task = asyncio.current_task()
    return finishes.whole and not (task is not None and task.cancelling())


async def replayable(
    cache: TieredCache, key: str, entry: CacheEntry
) -> list[dict[str, Any]] | None:
    """The chunks that replay ``entry``, or None when its stored stream is corrupt: then
    it is counted and deleted, and the caller goes upstream. Read whole before the first
    chunk is sent, so a reader never gets half a replay."""
    try:
        return list(replay_chunks(entry.body, entry.stream))
    except CacheCorruptError as exc:
        await cache.discard(key, exc)
        return None
