"""Gemini's explicit context caches (``cachedContents``) through a gateway: a public path."""

from limpet.providers.gemini import (
    DEFAULT_CACHED_CONTENTS_PATH,
    AiohttpCall,
    CachedContent,
    CachedContents,
    HTTPCall,
    HTTPReply,
    StorageEntry,
    StorageLedger,
    native_model,
    with_cached_content,
)

__all__ = [
    "DEFAULT_CACHED_CONTENTS_PATH",
    "AiohttpCall",
    "CachedContent",
    "CachedContents",
    "HTTPCall",
    "HTTPReply",
    "StorageEntry",
    "StorageLedger",
    "native_model",
    "with_cached_content",
]
