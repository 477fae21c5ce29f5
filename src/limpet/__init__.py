"""limpet: cheaper, faster LLM calls through OpenAI-compatible gateways.

Example:
    >>> from limpet import Client
    >>> async with Client() as client:   # OpenRouter, $OPENROUTER_API_KEY, in-memory cache
    ...     c = await client.complete(model="openai/gpt-5-mini", temperature=0,
    ...                               messages=[{"role": "user", "content": "hi"}])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from limpet._extras import import_extra as _import_extra
from limpet._version import __version__
from limpet.cache import CacheBackend, MemoryCache, TieredCache
from limpet.client import Client
from limpet.config import (
    AdmissionConfig,
    CachePolicy,
    Endpoint,
    FlightConfig,
    RetryConfig,
    RoutingConfig,
    Timeouts,
)
from limpet.errors import (
    APIConnectionError,
    APIError,
    APIGenerationError,
    APIResponseError,
    APIStatusError,
    APIStreamError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CacheCorruptError,
    CacheError,
    CacheRejectedError,
    CacheTimeoutError,
    CacheUnavailableError,
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    EmbeddingBatchError,
    InternalServerError,
    InvalidRequestError,
    LimpetError,
    NotFoundError,
    PaymentRequiredError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    UnprocessableEntityError,
)
from limpet.http.chunks import StreamChunk
from limpet.models import CacheStatus, Completion, Cost, Embeddings, Usage
from limpet.observe.stats import Stats
from limpet.observe.warm import WarmReport
from limpet.pipeline.keys import KeyExplanation, explain_key
from limpet.pipeline.stream import CompletionStream
from limpet.providers.pricing import ModelPrices, PriceTable
from limpet.providers.prompt_cache import CacheControlConfig
from limpet.routing.sticky import Router, StickyRouter

if TYPE_CHECKING:
    from limpet.cache.memcached.backend import MemcachedCache
    from limpet.cache.redis.backend import RedisCache

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIGenerationError",
    "APIResponseError",
    "APIStatusError",
    "APIStreamError",
    "APITimeoutError",
    "AdmissionConfig",
    "AuthenticationError",
    "BadRequestError",
    "CacheBackend",
    "CacheControlConfig",
    "CacheCorruptError",
    "CacheError",
    "CachePolicy",
    "CacheRejectedError",
    "CacheStatus",
    "CacheTimeoutError",
    "CacheUnavailableError",
    "Client",
    "ClientClosedError",
    "Completion",
    "CompletionStream",
    "ConfigurationError",
    "ConflictError",
    "Cost",
    "EmbeddingBatchError",
    "Embeddings",
    "Endpoint",
    "FlightConfig",
    "InternalServerError",
    "InvalidRequestError",
    "KeyExplanation",
    "LimpetError",
    "MemcachedCache",
    "MemoryCache",
    "ModelPrices",
    "NotFoundError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "PriceTable",
    "RateLimitError",
    "RedisCache",
    "RequestTimeoutError",
    "RetryConfig",
    "Router",
    "RoutingConfig",
    "Stats",
    "StickyRouter",
    "StreamChunk",
    "TieredCache",
    "Timeouts",
    "UnprocessableEntityError",
    "Usage",
    "WarmReport",
    "__version__",
    "explain_key",
]


def __getattr__(name: str) -> Any:
    # RedisCache needs the optional redis extra; import it only when asked for.
    if name == "RedisCache":
        return _import_extra("limpet.cache.redis.backend", name, extra="redis", needs=("redis",))
    if name == "MemcachedCache":
        return _import_extra(
            "limpet.cache.memcached.backend", name, extra="memcached", needs=("emcache",)
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
