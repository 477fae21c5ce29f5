"""Learned prompt-cache minimums: a correction to the capability table, learned per process.

Published minimums disagree (Sonnet 4.6: 1,024 on OpenRouter's page, 2,048 in orq.ai's
gateway docs; PROVIDERS.md, "Added 2026-12") and move every few months. A prefix marked
with ``cache_control`` below a model's real minimum caches nothing and says so only by
silence: its responses report neither cache writes nor reads. ``LearnedMinimums`` counts
that silence for prefixes marked at or above the minimum limpet believes; after
``after`` such responses for a model it raises the model's minimum for this process
(logged once per raise, visible in ``StickyRouter.stats.learned_minimums``), so that
``inject_cache_control`` stops marking prefixes that cannot cache.

The new minimum is the next power of two above the largest silent prefix (the published
minimums are 1,024, 2,048 and 4,096), never above a prefix of that model seen caching and
never above ``ceiling``. A minimum is only ever raised. Silence at or above a size that
was seen caching does not count: there, another cause is likelier (a provider behind the
gateway that does not cache) and a higher minimum would not help.
"""

from __future__ import annotations

import logging
import threading

__all__ = [
    "DEFAULT_LEARN_AFTER",
    "DEFAULT_MAX_LEARNED_MINIMUM",
    "LEARNED_MINIMUMS",
    "LearnedMinimums",
]

logger = logging.getLogger("limpet.prompt_cache")

#: Silent responses (no cache write, no read) above a model's minimum that raise it.
DEFAULT_LEARN_AFTER = 3
#: The highest minimum learned: twice the highest published one. Silence past it means
#: something other than a minimum (a gateway that does not report cache usage, say).
DEFAULT_MAX_LEARNED_MINIMUM = 8192


class LearnedMinimums:
    """Per-model minimums learned from responses; see the module docstring.

    Args:
        after: silent responses for a model that raise its minimum.
        ceiling: the highest minimum learned.

    Example:
        >>> learned = LearnedMinimums(after=2)
        >>> learned.observe("m", 1500, 1024, cached=False)
        >>> learned.observe("m", 1800, 1024, cached=False)
        2048
        >>> learned.minimum("m")
        2048
    """

    __slots__ = ("_cached_at", "_learned", "_lock", "_silent", "after", "ceiling")

    def __init__(
        self, after: int = DEFAULT_LEARN_AFTER, ceiling: int = DEFAULT_MAX_LEARNED_MINIMUM
    ) -> None:
        self.after = after
        self.ceiling = ceiling
        self._learned: dict[str, int] = {}
        self._silent: dict[str, list[int]] = {}
        self._cached_at: dict[str, int] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LearnedMinimums({self._learned!r})"

    def minimum(self, model: str) -> int:
        """The minimum learned for ``model``, or 0 when none was."""
        return self._learned.get(model, 0)

    def snapshot(self) -> dict[str, int]:
        """Every learned minimum, by model."""
        return dict(self._learned)

    def observe(
        self, model: str, marked_tokens: int, table_minimum: int, *, cached: bool
    ) -> int | None:
        """One response to a request whose deepest ``cache_control`` prefix is about
        ``marked_tokens`` long; ``cached``: it reported a cache write or read.

        Returns:
            The model's new minimum when this response raised it, else None.
        """
        with self._lock:
            if cached:
                known = self._cached_at.get(model)
                self._cached_at[model] = (
                    marked_tokens if known is None else min(known, marked_tokens)
                )
                return None
            minimum = max(table_minimum, self.minimum(model))
            seen_caching = self._cached_at.get(model, self.ceiling + 1)
            if marked_tokens < minimum or marked_tokens >= seen_caching or minimum >= self.ceiling:
                return None
            silent = self._silent.setdefault(model, [])
            silent.append(marked_tokens)
            if len(silent) < self.after:
                return None
            del self._silent[model]
            raised = min(1 << max(silent).bit_length(), seen_caching, self.ceiling)
            if raised <= minimum:
                return None
            self._learned[model] = raised
        logger.warning(
            "limpet: prompt caching: %d responses to %r reported no cache use for prefixes "
            "marked at %d-%d tokens; marking only prefixes of %d tokens or more from now on",
            len(silent),
            model,
            min(silent),
            max(silent),
            raised,
        )
        return raised

    def reset(self) -> None:
        """Forget everything learned."""
        with self._lock:
            self._learned.clear()
            self._silent.clear()
            self._cached_at.clear()


#: This process's learned minimums: the default ``CacheControlConfig.learned``, which
#: ``inject_cache_control`` follows and the Client's ``StickyRouter`` teaches.
LEARNED_MINIMUMS = LearnedMinimums()
