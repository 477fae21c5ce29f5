"""Filling the cache ahead of traffic: ``Client.warm`` and ``limpet warm``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from limpet.errors import LimpetError
from limpet.models import CacheStatus, Completion, Embeddings

__all__ = ["DEFAULT_WARM_CONCURRENCY", "WarmReport", "is_embedding", "warm"]

DEFAULT_WARM_CONCURRENCY = 8


@dataclass(slots=True)
class WarmReport:
    """What a warm-up did.

    Attributes:
        warmed: requests answered upstream and stored.
        skipped: requests already cached.
        uncacheable: requests policy does not cache (sampled); answered, not stored.
        failed: requests that raised; their messages are in ``errors``.
    """

    warmed: int = 0
    skipped: int = 0
    uncacheable: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.warmed + self.skipped + self.uncacheable + self.failed


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

    ``requests`` is read lazily, so a large file need not fit in memory. A failure is
    counted and kept, never raised: one bad line does not stop a warm-up.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise LimpetError(f"concurrency: expected an int >= 1, got {concurrency!r}")
    report = WarmReport()
    pending = iter(requests)

    async def worker() -> None:
        for request in pending:
            try:
                completion = await complete(**request)
            except (LimpetError, TypeError) as exc:
                report.failed += 1
                report.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                if completion.cache is CacheStatus.HIT:
                    report.skipped += 1
                elif completion.cache is CacheStatus.BYPASS:
                    report.uncacheable += 1
                else:
                    report.warmed += 1
            if progress is not None:
                progress(report)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return report
