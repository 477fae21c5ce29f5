"""Explicit Gemini context caches (``cachedContents``): create, get, update TTL, delete, list.

Gemini caches a prompt prefix explicitly as a *cachedContent*: a resource holding
contents, a system instruction and tools for one model, alive until its TTL runs out.
Requests that name it are billed the cheap cache-read price for its tokens; in exchange,
its storage is billed per token-hour for as long as it lives. ``CachedContents`` manages
them over the native REST API, wherever the gateway proxies it (by default
``{base_url}/google/v1beta/cachedContents``; Google's own is
``https://generativelanguage.googleapis.com/v1beta/cachedContents``), and keeps the
storage cost in a ``StorageLedger``.

It talks HTTP through an ``HTTPCall``, a one-method protocol, so it needs nothing from
the Client: ``AiohttpCall`` adapts an ``aiohttp.ClientSession`` it borrows.

- ``http_call``: the ``HTTPCall`` protocol and ``AiohttpCall``, its aiohttp adapter;
- ``resources``: the ``CachedContent`` resource and how the native API spells names,
  durations and times;
- ``ledger``: the storage cost of the caches (``StorageLedger``);
- ``cached_contents``: ``CachedContents``, the collection's create/get/update/delete/list.

Example:
    >>> async with aiohttp.ClientSession() as session:
    ...     http = AiohttpCall(session, headers={"Authorization": "Bearer sk-or-..."})
    ...     caches = CachedContents(http, "https://gateway.example/api")
    ...     cache = await caches.create(model="google/gemini-2.5-flash", ttl=3600,
    ...                                 system_instruction=LONG_MANUAL)
    ...     reference = with_cached_content({}, cache.name)     # reference it
    ...     await client.complete(**request, extra_body=reference)
    ...     await caches.update(cache.name, ttl=7200)             # keep it longer
    ...     await caches.delete(cache.name)                       # stop paying for it
    ...     print(caches.ledger.cost_usd(time.time()))
"""

from __future__ import annotations

from limpet.providers.gemini.cached_contents import DEFAULT_CACHED_CONTENTS_PATH, CachedContents
from limpet.providers.gemini.http_call import AiohttpCall, HTTPCall, HTTPReply
from limpet.providers.gemini.ledger import StorageEntry, StorageLedger
from limpet.providers.gemini.resources import CachedContent, native_model, with_cached_content

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
