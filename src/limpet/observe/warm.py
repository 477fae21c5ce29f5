"""Filling the cache ahead of traffic: ``Client.warm`` and ``limpet warm``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from limpet.cache.remote import RemoteCache
from limpet.cache.tiered import TieredCache
from limpet.errors import InvalidRequestError, LimpetError
from limpet.models import CacheStatus, Completion, Embeddings

__all__ = [
    "DEFAULT_WARM_CONCURRENCY",
    "MAX_WARM_CONCURRENCY",
    "WarmReport",
    "is_embedding",
    "warm",
    "writes_lost",
]

DEFAULT_WARM_CONCURRENCY = 8
#: The most requests a warm-up sends at once, whatever ``concurrency`` allows: past the
#: connection pool more only queue for admission, each holding its request and a task.
MAX_WARM_CONCURRENCY = 10_000


@dataclass(slots=True)
class WarmReport:
    """What a warm-up did.

    Attributes:
        warmed: requests answered upstream and stored.
        skipped: requests already cached (or answered by another caller's call of the
            same request: a line given twice).
        uncacheable: requests policy does not cache (sampled); answered, not stored.
        failed: requests that raised; their messages are in ``errors``.
        unstored: requests answered upstream whose answers were not stored (too large, a
            tier down or refusing, a write lost), as the cache counted its lost writes
            over the warm-up (those of other calls meanwhile count too).
    """

    warmed: int = 0
    skipped: int = 0
    uncacheable: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    unstored: int = 0

    @property
    def done(self) -> int:
        return self.warmed + self.skipped + self.uncacheable + self.failed + self.unstored

    def settle(self, lost: int) -> None:
        """Count ``lost`` writes (``writes_lost`` after the warm-up's writes landed, less
        before) as unstored answers, out of the warmed ones."""
        self.unstored = min(self.warmed, max(lost, 0))
        self.warmed -= self.unstored


def writes_lost(cache: TieredCache) -> int:
    """The writes ``cache`` has not kept so far: too large for it or for a tier's server,
    refused by a tier as they were made, or lost after a tier queued them."""
    lost = cache.stats.oversized + cache.stats.unwritten
    for tier in cache.tiers:
        if isinstance(tier, RemoteCache):
            lost += tier.failed_writes + tier.dropped_writes
        lost += getattr(tier, "oversized_writes", 0)  # Memcached's own item limit
    return lost


def is_embedding(request: Mapping[str, Any]) -> bool:
    """Whether a warm-up request is an ``embed()`` one: ``input`` and no ``messages``."""
    return "input" in request and "messages" not in request


async def warm(
    complete: Callable[..., Awaitable[Completion | Embeddings]],
    requests: Iterable[Mapping[str, Any]],
    *,
    concurrency: int = DEFAULT_WARM_CONCURRENCY,
    progress: Callable[[WarmReport], None] | None = None,
) -> WarmReport:
    """Send each request through ``complete`` with at most ``concurrency`` at once.

    ``complete`` may also embed (see ``is_embedding``): an ``Embeddings`` counts as
    skipped when every input was cached, else as warmed.

    ``requests`` is read lazily, so a large file need not fit in memory, and no more
    workers are started than there are requests to send (nor than
    ``MAX_WARM_CONCURRENCY``). A failure is counted and kept, never raised: one bad line
    does not stop a warm-up.

    Raises:
        InvalidRequestError: ``concurrency`` or ``progress`` is not usable (before any
            request is read).
    """
    _check_options(concurrency, progress)
    report = WarmReport()
    pending = iter(requests)

    async def one(request: Mapping[str, Any]) -> None:
        try:
            completion = await complete(**request)
        except (LimpetError, TypeError) as exc:
            report.failed += 1
            report.errors.append(f"{type(exc).__name__}: {exc}")
        else:
            status = completion.cache
            if status is CacheStatus.HIT or (
                status is CacheStatus.COALESCED and isinstance(completion, Completion)
            ):
                report.skipped += 1
            elif status is CacheStatus.BYPASS:
                report.uncacheable += 1
            else:
                report.warmed += 1
        if progress is not None:
            progress(report)

    # Each worker that draws a request starts the next one (up to ``concurrency``), which
    # draws its own: a warm-up of a few requests starts a few workers (and one more, which
    # finds none left), whatever ``concurrency`` allows; requests are still taken in order.
    limit = min(concurrency, MAX_WARM_CONCURRENCY)
    started = 0
    running: set[asyncio.Future[None]] = set()

    def start() -> None:
        nonlocal started
        started += 1
        running.add(asyncio.ensure_future(worker()))

    async def worker() -> None:
        for request in pending:
            if started < limit:
                start()
            await one(request)

    start()
    try:
        while running:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_EXCEPTION)
            running.difference_update(done)
            for ended in done:
                ended.result()  # the first failure (the iterable's, or ``progress``'s)
    finally:
        for left in running:  # still running when another failed, or warm() was cancelled
            left.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    return report


def _check_options(concurrency: object, progress: object) -> None:
    """Raise ``InvalidRequestError`` naming ``concurrency`` (an int >= 1) or ``progress``
    (callable or None) when it is not usable."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidRequestError("concurrency", "an int >= 1", concurrency)
    if progress is not None and not callable(progress):
        raise InvalidRequestError("progress", "a callable or None", progress)
