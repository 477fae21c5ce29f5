"""``CachedContents``: Gemini's ``cachedContents`` collection over the native REST API,
with the storage cost of what it creates kept in a ``StorageLedger``."""

from __future__ import annotations

import builtins
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from limpet._checks import check_http_url
from limpet.errors import ConfigurationError, status_error
from limpet.providers.gemini.http_call import HTTPCall, HTTPReply
from limpet.providers.gemini.ledger import StorageLedger
from limpet.providers.gemini.resources import (
    CachedContent,
    cache_id,
    capability_slug,
    duration,
    full_name,
    native_model,
)
from limpet.providers.prompt_cache import DEFAULT_CAPABILITIES, CapabilityTable

__all__ = ["DEFAULT_CACHED_CONTENTS_PATH", "CachedContents"]

#: Where a gateway proxies Gemini's native API, relative to its base URL.
DEFAULT_CACHED_CONTENTS_PATH = "/google/v1beta/cachedContents"

_MAX_PAGES = 1000


class CachedContents:
    """Gemini ``cachedContents`` over the native REST API, with a storage ledger.

    Errors: a non-2xx answer raises the matching ``APIStatusError`` (``NotFoundError`` for a
    cache that expired or was deleted), no answer ``APIConnectionError``; nothing is retried.

    Args:
        http: sends the requests.
        base_url: the gateway's (or Google's) API root.
        path: the collection's path under ``base_url``.
        ledger: where storage cost goes; a new one when None.
        capabilities: gives each model's storage price (``storage_usd_per_mtok_hour``).
        storage_usd_per_mtok_hour: a storage price for every cache, over the table's.
        clock: Unix time, for deletions and when the server sends no times.
    """

    __slots__ = ("_capabilities", "_http", "_price", "_url", "clock", "ledger")

    def __init__(
        self,
        http: HTTPCall,
        base_url: str,
        *,
        path: str = DEFAULT_CACHED_CONTENTS_PATH,
        ledger: StorageLedger | None = None,
        capabilities: CapabilityTable = DEFAULT_CAPABILITIES,
        storage_usd_per_mtok_hour: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_http_url("CachedContents.base_url", base_url)
        if "?" in base_url:  # names are appended to the URL, and the URL is shown
            raise ConfigurationError("CachedContents.base_url: a query is not accepted")
        if not isinstance(path, str) or (path and not path.startswith("/")):
            raise ConfigurationError(f"CachedContents.path: expected a path from '/', got {path!r}")
        self._http = http
        self._url = base_url.rstrip("/") + path.rstrip("/")
        self.ledger = ledger if ledger is not None else StorageLedger()
        self._capabilities = capabilities
        self._price = storage_usd_per_mtok_hour
        self.clock = clock

    def __repr__(self) -> str:
        return f"CachedContents({self._url!r})"

    @property
    def url(self) -> str:
        """The collection's URL."""
        return self._url

    async def create(
        self,
        *,
        model: str,
        contents: Sequence[Mapping[str, Any]] | None = None,
        system_instruction: str | Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_config: Mapping[str, Any] | None = None,
        ttl: float | None = None,
        display_name: str | None = None,
    ) -> CachedContent:
        """Create a cache of ``contents``, ``system_instruction`` and ``tools`` for ``model``.

        Args:
            model: ``google/gemini-2.5-flash``, ``gemini-2.5-flash`` or ``models/...``.
            contents: Gemini ``Content`` objects (``{"role", "parts": [{"text"}]}``).
            system_instruction: text, or a Gemini ``Content``.
            ttl: seconds it lives; the API's default (1 h) when None.
            display_name: a label for listings.
        """
        body: dict[str, Any] = {"model": native_model(model)}
        if contents is not None:
            body["contents"] = list(contents)
        if isinstance(system_instruction, str):
            body["systemInstruction"] = {"parts": [{"text": system_instruction}]}
        elif system_instruction is not None:
            body["systemInstruction"] = system_instruction
        if tools is not None:
            body["tools"] = list(tools)
        if tool_config is not None:
            body["toolConfig"] = tool_config
        if ttl is not None:
            body["ttl"] = duration(ttl)
        if display_name is not None:
            body["displayName"] = display_name
        cache = await self._send("POST", self._url, json=body)
        self._record(cache, created=True)
        return cache

    async def get(self, name: str) -> CachedContent:
        """The cache named ``name`` (``cachedContents/{id}`` or just the id). When it is
        gone (a 404: deleted elsewhere, or expired), its storage stops accruing now."""
        cache = await self._send("GET", self._item(name), name=name)
        self._record(cache)
        return cache

    async def update(self, name: str, *, ttl: float) -> CachedContent:
        """Set the cache to expire ``ttl`` seconds from now; its storage cost follows (and
        stops now when it is gone: a 404). Of a cache this ledger does not hold (another
        created it), the storage bought counts here: from its expiry before (read first)
        to its new one, so the two ledgers never count the same hour (its creator's reads
        do not move its own end past the one it bought). Deleted by its creator, it is
        counted here until a read here finds it gone."""
        url = self._item(name)
        held = full_name(name) in self.ledger.entries
        before = None if held else await self._send("GET", url, name=name)
        cache = await self._send(
            "PATCH", url, json={"ttl": duration(ttl)}, params={"updateMask": "ttl"}, name=name
        )
        if before is None:
            self._record(cache, bought=True)
        elif before.expire_time is not None and cache.expire_time is not None:
            start = max(before.expire_time, self.clock())
            if cache.expire_time > start:
                self._record(cache, bought=True, start=start)
        return cache

    async def delete(self, name: str) -> None:
        """Delete the cache; its storage stops accruing now (also when it is already gone:
        a 404, still raised)."""
        url = self._item(name)
        reply = await self._http("DELETE", url)
        self._raise_for(reply, name=name)
        self.ledger.end(full_name(name), self.clock())

    async def list(self, *, page_size: int | None = None) -> builtins.list[CachedContent]:
        """Every cache the account holds, following ``nextPageToken`` to the end (those
        the ledger holds are brought up to date; no other is added to it)."""
        found: builtins.list[CachedContent] = []
        params: dict[str, str] = {}
        if page_size is not None:
            params["pageSize"] = str(page_size)
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            reply = await self._http("GET", self._url, params=params or None)
            self._raise_for(reply)
            page = reply.body if isinstance(reply.body, Mapping) else {}
            items = page.get("cachedContents")
            for item in items if isinstance(items, list) else ():
                cache = CachedContent.from_json(item)
                self._record(cache)
                found.append(cache)
            token = page.get("nextPageToken")
            if not isinstance(token, str) or not token or token in seen:
                break
            seen.add(token)
            params["pageToken"] = token
        return found

    def storage_price(self, model: str) -> float | None:
        """USD per million tokens per hour of storage for ``model``, or None when free or
        unknown."""
        if self._price is not None:
            return self._price
        capability = self._capabilities.lookup(capability_slug(model))
        return None if capability is None else capability.storage_usd_per_mtok_hour

    async def _send(
        self,
        method: str,
        url: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> CachedContent:
        reply = await self._http(method, url, json=json, params=params)
        self._raise_for(reply, name=name)
        return CachedContent.from_json(reply.body)

    def _raise_for(self, reply: HTTPReply, *, name: str | None = None) -> None:
        """Raise the error of a reply that is not a 2xx; a 404 for cache ``name`` first
        ends its storage in the ledger at the clock's now (it is gone upstream: deleted
        elsewhere or expired; an expired one has ended earlier, at its expiry)."""
        if 200 <= reply.status < 300:
            return
        if reply.status == 404 and name is not None:
            self.ledger.end(full_name(name), self.clock())
        error = reply.body.get("error") if isinstance(reply.body, Mapping) else None
        message = error.get("message") if isinstance(error, Mapping) else None
        raise status_error(reply.status)(
            message if isinstance(message, str) else reply.text or "no message",
            status_code=reply.status,
            body=reply.text,
            request_id=reply.request_id,
        )

    def _item(self, name: str) -> str:
        return f"{self._url}/{cache_id(name)}"

    def _record(
        self,
        cache: CachedContent,
        *,
        created: bool = False,
        bought: bool = False,
        start: float | None = None,
    ) -> None:
        """Put what ``cache`` stores in the ledger: one this ledger's caches created, one
        it holds already (its expiry moved later only when ``bought`` here: time another
        instance bought is that one's to count), or the storage bought from ``start`` (an
        update of another's). Another's, only read here (listed, got), is its creator's
        to count: counted here too, it was billed twice, and for ever after its creator
        deleted it."""
        if not created and start is None and cache.name not in self.ledger.entries:
            return
        price = self.storage_price(cache.model)
        if price is None:
            return
        now = self.clock()
        if start is None:
            start = cache.create_time if cache.create_time is not None else now
        end = cache.expire_time if cache.expire_time is not None else math.inf
        self.ledger.record(
            cache.name,
            tokens=cache.total_tokens,
            usd_per_mtok_hour=price,
            start=start,
            end=end,
            extend=created or bought,
        )
