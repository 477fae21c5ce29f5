"""The seam for simulating a provider's prompt cache behind a fake endpoint.

A real provider decides, per request, how many prompt tokens it read from its prefix
cache and how many it wrote; the gateway reports both in ``usage`` and prices them.
``PromptCacheModel`` is where that decision plugs in. The default, ``NoPromptCache``,
caches nothing, so every prompt token is billed at the full price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["NoPromptCache", "PromptCacheModel", "PromptCacheResult"]


@dataclass(frozen=True, slots=True)
class PromptCacheResult:
    """How one request's prompt met the provider's cache.

    Attributes:
        cached_tokens: prompt tokens read from the cache.
        cache_write_tokens: prompt tokens written to the cache, whatever their TTL.
        cache_write_1h_tokens: the part of ``cache_write_tokens`` written with a 1 h TTL,
            priced at ``input_cache_write_1h`` instead of ``input_cache_write``.
    """

    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0

    def __post_init__(self) -> None:
        if min(self.cached_tokens, self.cache_write_tokens, self.cache_write_1h_tokens) < 0:
            raise ValueError(f"token counts must be >= 0: {self}")
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise ValueError(f"1 h writes are part of cache_write_tokens: {self}")

    @property
    def total(self) -> int:
        """Prompt tokens the cache touched, read or written."""
        return self.cached_tokens + self.cache_write_tokens


class PromptCacheModel(Protocol):
    """Decides cache reads and writes for each request an endpoint answers.

    One instance serves one endpoint, since each endpoint stands for one provider
    instance with its own cache. ``account`` is called once per successful completion,
    streamed or not, before the reply is generated.
    """

    def account(
        self, model: str, body: Mapping[str, Any], prompt_tokens: int, *, now: float
    ) -> PromptCacheResult:
        """Record a request against the cache and say what it read and wrote.

        Args:
            model: the requested model.
            body: the request body as received.
            prompt_tokens: the request's prompt tokens; the result must not exceed it.
            now: the gateway clock's current time, for TTLs.
        """
        ...

    def reset(self) -> None:
        """Forget everything cached."""
        ...


class NoPromptCache:
    """A provider without prompt caching: nothing is ever read or written."""

    __slots__ = ()

    def account(
        self, model: str, body: Mapping[str, Any], prompt_tokens: int, *, now: float
    ) -> PromptCacheResult:
        return PromptCacheResult()

    def reset(self) -> None:
        pass

    def __repr__(self) -> str:
        return "NoPromptCache()"
