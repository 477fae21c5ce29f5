"""Public import paths are a contract: code outside this repository imports these names
from these modules. Internal modules may move; these may not."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "limpet": [
        "Client",
        "Endpoint",
        "Completion",
        "Usage",
        "CacheStatus",
        "MemoryCache",
        "RedisCache",
        "MemcachedCache",
        "TieredCache",
        "CachePolicy",
        "CompletionStream",
        "StreamChunk",
        "Embeddings",
        "Stats",
        "StickyRouter",
        "Router",
        "LimpetError",
    ],
    "limpet.cache": [
        "CacheBackend",
        "CacheEntry",
        "EntryCodec",
        "MemoryCache",
        "TieredCache",
        "RedisCache",
        "MemcachedCache",
        "TierStats",
    ],
    "limpet.cache.redis": ["RedisCache"],
    "limpet.cache.memcached": ["MemcachedCache"],
    "limpet.testing": ["FakeGateway", "FakeEndpoint", "FakeModel", "Fault", "OpenRouterProviders"],
    "limpet.gemini": [
        "CachedContents",
        "CachedContent",
        "AiohttpCall",
        "with_cached_content",
        "native_model",
    ],
    "limpet.metrics": ["PrometheusMetrics"],
    "limpet.tracing": ["OpenTelemetrySpans"],
    "limpet.cli": ["main"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_a_public_path_exports_its_names(module: str) -> None:
    imported = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if getattr(imported, name, None) is None]
    assert missing == []


@pytest.mark.parametrize("module", sorted(set(PUBLIC) - {"limpet", "limpet.cli"}))
def test_a_public_path_lists_its_names_in_all(module: str) -> None:
    imported = importlib.import_module(module)
    assert set(PUBLIC[module]) <= set(imported.__all__)


def test_a_name_is_one_object_whatever_path_it_is_imported_from() -> None:
    import limpet
    import limpet.cache
    import limpet.cache.redis
    import limpet.gemini
    import limpet.metrics
    from limpet.observe.metrics import PrometheusMetrics
    from limpet.providers.gemini import CachedContents

    assert limpet.RedisCache is limpet.cache.RedisCache is limpet.cache.redis.RedisCache
    assert limpet.gemini.CachedContents is CachedContents
    assert limpet.metrics.PrometheusMetrics is PrometheusMetrics
