"""limpet: cheaper, faster LLM calls through OpenAI-compatible gateways.

Example:
    >>> from limpet import Client
    >>> async with Client() as client:   # OpenRouter, $OPENROUTER_API_KEY, in-memory cache
    ...     c = await client.complete(model="openai/gpt-5-mini", temperature=0,
    ...                               messages=[{"role": "user", "content": "hi"}])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from limpet._version import __version__
from limpet.cache import CacheBackend, MemoryCache, TieredCache
from limpet.client import Client
from limpet.config import (
    CachePolicy,
    Endpoint,
    FlightConfig,
    RetryConfig,
    RoutingConfig,
    Timeouts,
)
from limpet.keys import KeyExplanation, explain_key
from limpet.models import CacheStatus, Completion, Cost, Usage
from limpet.prompt_cache import CacheControlConfig
from limpet.routing import Router, StickyRouter
from limpet.stats import Stats
from limpet.stream import CompletionStream
from limpet.streaming import StreamChunk
from limpet.warm import WarmReport

if TYPE_CHECKING:
    from limpet.cache.memcached import MemcachedCache
    from limpet.cache.redis import RedisCache

__all__ = [
    "CacheBackend",
    "CacheControlConfig",
    "CachePolicy",
    "CacheStatus",
    "Client",
    "Completion",
    "CompletionStream",
    "Cost",
    "Endpoint",
    "FlightConfig",
    "KeyExplanation",
    "MemcachedCache",
    "MemoryCache",
    "RedisCache",
    "RetryConfig",
    "Router",
    "RoutingConfig",
    "Stats",
    "StickyRouter",
    "StreamChunk",
    "TieredCache",
    "Timeouts",
    "Usage",
    "WarmReport",
    "__version__",
    "explain_key",
]


def __getattr__(name: str) -> Any:
    # RedisCache needs the optional redis extra; import it only when asked for.
    if name == "RedisCache":
        from limpet.cache.redis import RedisCache

        return RedisCache
    if name == "MemcachedCache":
        from limpet.cache.memcached import MemcachedCache

        return MemcachedCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
